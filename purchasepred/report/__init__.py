"""`purchasepred report`: one self-contained HTML page with the figures of a run (see build.py)."""
