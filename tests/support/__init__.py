"""What the tests share. The fake servers are the modules of this package."""
