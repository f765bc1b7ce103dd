//! sea-orm entities of the tables this service owns.

pub(crate) mod project;
