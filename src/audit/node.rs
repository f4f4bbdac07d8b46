//! The node a record was written on (`[node] id`), as its first member after the chain
//! header: several nodes' trails meet in one audit database, and each record says where
//! it came from. The chain covers it like any member; records written before it existed
//! verify as they are.

/// The encoded `"node":"<id>"` member and a buffer to splice it into a record's fields.
pub(super) struct NodeStamp {
    member: Vec<u8>,
    scratch: Vec<u8>,
}

impl NodeStamp {
    pub(super) fn new(id: &str) -> NodeStamp {
        let mut member = b"\"node\":".to_vec();
        // A string always serializes.
        member.extend(serde_json::to_vec(id).unwrap_or_else(|_| b"\"\"".to_vec()));
        NodeStamp {
            member,
            scratch: Vec::with_capacity(1024),
        }
    }

    /// `fields` (a JSON object) with the node member first.
    pub(super) fn stamp(&mut self, fields: &[u8]) -> &[u8] {
        self.scratch.clear();
        self.scratch.push(b'{');
        self.scratch.extend_from_slice(&self.member);
        if fields.len() > 2 {
            self.scratch.push(b',');
            self.scratch.extend_from_slice(&fields[1..]);
        } else {
            self.scratch.push(b'}');
        }
        &self.scratch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_comes_first_and_an_empty_record_gets_it_alone() {
        let mut stamp = NodeStamp::new("node-\"2\"");
        assert_eq!(
            stamp.stamp(br#"{"type":"x"}"#),
            br#"{"node":"node-\"2\"","type":"x"}"#
        );
        assert_eq!(stamp.stamp(b"{}"), br#"{"node":"node-\"2\""}"#);
    }
}
