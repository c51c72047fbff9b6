"""Placeholder replaced below."""
def run(*a, **k):
    return {"runs": [], "short": []}
