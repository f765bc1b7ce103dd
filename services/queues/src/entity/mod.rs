//! sea-orm entities of the tables this service owns. Every instant is stored
//! as milliseconds since the Unix epoch (`*_ms`, `BIGINT`), the precision the
//! Redis backend keeps too.

pub(crate) mod change;
pub(crate) mod entry;
pub(crate) mod meta;
pub(crate) mod pop;
pub(crate) mod queue;
pub(crate) mod worker;
