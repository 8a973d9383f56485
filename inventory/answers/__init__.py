"""Reading what was stored: named queries, diff, the HTML report, and doctor's checks."""
