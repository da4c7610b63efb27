"""pytest plugin (entry point ``tether``): fixtures for tether's testing servers."""
