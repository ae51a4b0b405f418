"""Test helpers that trimta's users can import too: fakes for DNS and the network."""
