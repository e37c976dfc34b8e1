"""Live delivery: streams with replay (streams) and shared execution of subscriptions (shared).

Imports domains' context, infra and core; never web, workers or resolvers."""
