"""The hub's API routers, one per concern; ``guard.TokenGuard`` requires the token on all of them."""
