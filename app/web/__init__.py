"""HTML pages for people in a browser."""
