"""The test suite: its folders mirror the package's layers; tests/helpers holds what the tests share."""
