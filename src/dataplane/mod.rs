//! The dataplane: programs a compiled `NodePlan` into the kernel's nftables (work in progress).
