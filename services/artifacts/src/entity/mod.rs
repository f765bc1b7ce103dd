//! sea-orm entities of the tables this service owns.

pub(crate) mod artifact;
pub(crate) mod blob;
pub(crate) mod model;
