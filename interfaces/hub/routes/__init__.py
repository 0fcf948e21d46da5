"""The hub's API routers, one per concern; every route in them needs the hub token."""
