//! Word lists shared by the generators.

pub const NAMES: [&str; 40] = [
    "Tom", "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack",
    "Kate", "Leo", "Mia", "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tara", "Victor", "Wendy",
    "Yusuf", "Zoe", "Omar", "Lena", "Hugo", "Nina", "Ravi", "Sofia", "Ivan", "Maya", "Eli", "Ada",
    "Milo", "Ruth", "Theo", "Vera", "Axel", "June",
];

/// Names whose pronoun is "she" (the rest use "he").
pub fn pronoun(name: &str) -> (&'static str, &'static str) {
    const SHE: [&str; 20] = [
        "Anna", "Clara", "Emma", "Grace", "Iris", "Kate", "Mia", "Olivia", "Rosa", "Tara", "Wendy",
        "Zoe", "Lena", "Nina", "Sofia", "Maya", "Ada", "Ruth", "Vera", "June",
    ];
    if SHE.contains(&name) {
        ("she", "her")
    } else {
        ("he", "his")
    }
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
