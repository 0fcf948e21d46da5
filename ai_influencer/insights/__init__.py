"""Social-profile insights from data the user exports (CSV/JSON); nothing is fetched or invented."""

from ai_influencer.insights.metrics import (
    InsightsError,
    ProfileInsight,
    compute_insights,
    parse_upload,
)

__all__ = ["InsightsError", "ProfileInsight", "compute_insights", "parse_upload"]
