"""What the tests share: pools and rows, the CLI runner, the episode model, the crash writer."""
