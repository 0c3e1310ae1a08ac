//! Enums stored and sent as fixed words (statuses, services, severities): one definition of
//! the words, their list, and the way back from text.

/// Defines `enum $name` whose variants are the given words: `ALL` (in the order given),
/// `as_str`, `parse` (exactly those words) and `Display`. Attributes before the name (docs,
/// more derives) go on the enum.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    text_enum!(
        /// For the test.
        Colour {
            Red => "red",
            DeepBlue => "deep_blue",
        }
    );

    #[test]
    fn words_round_trip_and_nothing_else_parses() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::DeepBlue]);
        for colour in Colour::ALL {
            assert_eq!(Colour::parse(colour.as_str()), Some(colour));
            assert_eq!(colour.to_string(), colour.as_str());
        }
        assert_eq!(Colour::DeepBlue.as_str(), "deep_blue");
        for word in ["", "Red", "deep-blue", "red "] {
            assert_eq!(Colour::parse(word), None, "{word:?}");
        }
    }
}
