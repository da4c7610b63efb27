//! (placeholder: ChaosProxy, issue 4)
