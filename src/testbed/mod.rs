//! The testbed: a node made of network namespaces, with real packets (work in progress).
