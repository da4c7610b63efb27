//! (placeholder: SignalServer, issue 3)
