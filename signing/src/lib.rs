//! Signed plugin manifests, keys, trust store. (Being built; see issue 2.)
