"""One router per area of the console (the API's routes follow the same rule)."""
