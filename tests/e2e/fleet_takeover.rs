//! A node killed with SIGKILL while it holds pending work (issue 13).
