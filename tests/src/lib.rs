//! keel-tests: black-box and workspace-level tests live in tests/tests/.
