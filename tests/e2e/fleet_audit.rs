//! The fleet's trail read from the PostgreSQL audit sink (issue 13).
