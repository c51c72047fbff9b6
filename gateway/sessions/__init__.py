"""exec/attach session recording: asciinema v2 casts of what passed, one per session,
written off the event loop (`start.SessionRecordings` on the request path, `cli` for
`vgate sessions list|show|play`)."""
