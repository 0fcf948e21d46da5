"""The interfaces: the ``influencer`` CLI, the Control Hub (web) and the desktop GUI.

They sit above the orchestration layer (flows/, tasks/, blocks/) and the domain (ai_influencer/):
they parse, call a use case or start a flow, and show the result; they hold no pipeline logic.
"""
