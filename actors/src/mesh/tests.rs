use super::*;

#[test]
fn labels_name_members_and_nothing_else() {
    assert_eq!(node_of_label(&session_label(7)), Some(7));
    assert_eq!(node_of_label("node-"), None);
    assert_eq!(node_of_label("node-x"), None);
    assert_eq!(node_of_label("external"), None);
    assert_eq!(node_of_label("127.0.0.1:4000"), None);
}

#[test]
fn the_cookie_is_a_keyed_derivation_of_the_cluster_key() {
    let first = cookie(&[1; 32]);
    assert_eq!(first, cookie(&[1; 32]));
    assert_ne!(first, cookie(&[2; 32]));
    assert_eq!(first.len(), 64);
    // The cookie must not reveal the key it came from.
    assert!(!first.contains(&"01".repeat(32)));
}
