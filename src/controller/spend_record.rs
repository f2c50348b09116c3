//! What a deleted session cost, carried in its `CleanupComplete` Event: the
//! session and its status are gone then, and `gpu-shopper cost` reads the
//! Event back. One writer and one reader, so the note's wording is kept here.

/// A deleted session's spend, as its last Event states it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendRecord {
    pub cost_usd: f64,
    pub consumer: Option<String>,
}

const COST: &str = "; it cost $";
const IN_ALL: &str = " in all";
const CONSUMER: &str = " (consumer ";

impl SpendRecord {
    /// Appended to the CleanupComplete note: "; it cost $0.4231 in all (consumer team-vision)".
    pub fn note_suffix(&self) -> String {
        let consumer = self.consumer.as_ref().map(|c| format!("{CONSUMER}{c})")).unwrap_or_default();
        format!("{COST}{:.4}{IN_ALL}{consumer}", self.cost_usd)
    }

    /// The record in a CleanupComplete note, if it has one.
    pub fn parse(note: &str) -> Option<Self> {
        // The first "; it cost $" is ours: the note before it is the operator's words, while a
        // consumer (the user's words, last) could hold another.
        let (_, rest) = note.split_once(COST)?;
        let (amount, rest) = rest.split_once(IN_ALL)?;
        let consumer = rest.strip_prefix(CONSUMER).and_then(|c| c.strip_suffix(')')).map(str::to_string);
        Some(SpendRecord { cost_usd: amount.parse().ok()?, consumer })
    }
}

/// The provider a CleanupComplete note names ("instance 123 on vastai is destroyed ...").
pub fn provider_in(note: &str) -> Option<&str> {
    note.strip_prefix("instance ")?.split_once(" on ")?.1.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_reads_back_as_it_was_written() {
        let record = SpendRecord { cost_usd: 0.42317, consumer: Some("team-vision".into()) };
        let note = format!("instance 7 on vastai is destroyed; nothing bills any more{}", record.note_suffix());
        assert_eq!(
            note,
            "instance 7 on vastai is destroyed; nothing bills any more; it cost $0.4232 in all (consumer team-vision)"
        );
        assert_eq!(
            SpendRecord::parse(&note),
            Some(SpendRecord { cost_usd: 0.4232, consumer: Some("team-vision".into()) })
        );
        assert_eq!(provider_in(&note), Some("vastai"));
        let nameless = SpendRecord { cost_usd: 0.0, consumer: None };
        let note = format!("no instance was rented for this session; nothing to destroy{}", nameless.note_suffix());
        assert_eq!(SpendRecord::parse(&note), Some(nameless));
        assert_eq!(provider_in(&note), None);
        assert_eq!(SpendRecord::parse("instance 7 on vastai is destroyed; nothing bills any more"), None);
        // A consumer that imitates the record changes neither the cost nor whose it is.
        let sly = SpendRecord { cost_usd: 5.0, consumer: Some("x; it cost $0.0000 in all (consumer team-b".into()) };
        let note = format!("instance 7 on vastai is destroyed; nothing bills any more{}", sly.note_suffix());
        assert_eq!(SpendRecord::parse(&note), Some(sly));
    }
}
