"""Training and prediction machinery: events, cancellation, device choice, the loop."""
