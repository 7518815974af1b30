"""Real local HTTP servers that play each voice provider as its documentation describes."""
