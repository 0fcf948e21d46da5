"""Persona clips: the storyboard's shots as OpenRouter video jobs, kept durably, checked for identity."""
