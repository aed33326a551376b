"""Contract suites: the same test bodies against every implementation of a port."""
