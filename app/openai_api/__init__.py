"""OpenAI-compatible routes (`/v1/...`) for any OpenAI SDK: same keys, pool, plus rules and accounts."""
