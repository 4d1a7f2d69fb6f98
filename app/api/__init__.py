"""JSON routes for scripts (`/api/...`): parse, call one service function, shape the answer."""
