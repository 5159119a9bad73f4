from tests.fakes import node  # noqa: F401  (the FakeNode fixture for the HTTP tests)
