//! README.md renders as meant and stays a user's page: every code fence is
//! closed, the size is at most 15,000 bytes, the top-level sections stand in
//! their order after a paragraph that says what the project is, and the
//! quickstart is two commands in one block.

use std::ops::Range;

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Parser, Tag, TagEnd};

const README: &str = include_str!("../README.md");

/// The most bytes the README may hold: enough for what and why, how to use
/// it and what it promises; design arguments belong next to the code.
const MAX_BYTES: usize = 15_000;

/// The `##` sections, in order.
const SECTIONS: &[&str] = &[
    "Quickstart",
    "Concepts",
    "Subcommands by example",
    "Configuration",
    "Guarantees",
    "Operations",
    "Benchmarks",
    "Tests",
];

/// A fenced code block: the section it stands in, its source range and text.
struct Fence {
    section: Option<String>,
    range: Range<usize>,
    text: String,
}

/// What the README is made of: the text of each `##` heading in order,
/// whether a paragraph comes before the first of them, and every fence.
struct Outline {
    sections: Vec<String>,
    intro_paragraph: bool,
    fences: Vec<Fence>,
}

fn outline(markdown: &str) -> Outline {
    let mut outline = Outline {
        sections: Vec::new(),
        intro_paragraph: false,
        fences: Vec::new(),
    };
    let mut heading: Option<String> = None;
    let mut fence: Option<Fence> = None;
    for (event, range) in Parser::new(markdown).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading {
                level: HeadingLevel::H2,
                ..
            }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(HeadingLevel::H2)) => {
                outline.sections.extend(heading.take());
            }
            Event::Start(Tag::Paragraph) if outline.sections.is_empty() => {
                outline.intro_paragraph = true;
            }
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(_))) => {
                fence = Some(Fence {
                    section: outline.sections.last().cloned(),
                    range,
                    text: String::new(),
                });
            }
            Event::End(TagEnd::CodeBlock) => outline.fences.extend(fence.take()),
            Event::Text(text) | Event::Code(text) => {
                if let Some(heading) = &mut heading {
                    heading.push_str(&text);
                } else if let Some(fence) = &mut fence {
                    fence.text.push_str(&text);
                }
            }
            _ => {}
        }
    }
    outline
}

/// Whether a fenced block runs to the end of the document without its
/// closing fence (CommonMark then closes it there, swallowing the rest).
fn is_open(markdown: &str, fence: &Fence) -> bool {
    let source = &markdown[fence.range.clone()];
    let reaches_end = markdown[fence.range.end..].trim().is_empty();
    let opening = source.lines().next().unwrap_or_default().trim_start();
    let mark = opening.chars().next().unwrap_or('`');
    let width = opening.chars().take_while(|&c| c == mark).count();
    let closing = source.lines().skip(1).last().map(str::trim);
    let closed = closing
        .is_some_and(|line| line.chars().count() >= width && line.chars().all(|c| c == mark));
    reaches_end && !closed
}

#[test]
fn every_code_fence_is_closed() {
    for fence in &outline(README).fences {
        assert!(
            !is_open(README, fence),
            "expected every code fence closed; the one at byte {} in section {:?} runs to the end",
            fence.range.start,
            fence.section
        );
    }
}

#[test]
fn an_unclosed_last_fence_is_found() {
    let markdown = "# t\n\ntext\n\n```sh\necho one\n\nmore text\n";
    let fences = outline(markdown).fences;
    assert_eq!(fences.len(), 1);
    assert!(is_open(markdown, &fences[0]), "expected the fence open");
    let closed = "# t\n\n```sh\necho one\n```\n";
    assert!(!is_open(closed, &outline(closed).fences[0]));
}

#[test]
fn the_readme_is_at_most_15000_bytes() {
    assert!(
        README.len() <= MAX_BYTES,
        "expected README.md to hold at most {MAX_BYTES} bytes, it holds {}",
        README.len()
    );
}

#[test]
fn the_sections_stand_in_order_after_what_and_why() {
    let outline = outline(README);
    assert!(
        outline.intro_paragraph,
        "expected a paragraph saying what and why before the first section"
    );
    assert_eq!(
        outline.sections, SECTIONS,
        "expected these `##` sections in this order"
    );
}

#[test]
fn the_quickstart_is_two_commands_in_one_block() {
    let fences: Vec<_> = outline(README)
        .fences
        .into_iter()
        .filter(|fence| fence.section.as_deref() == Some("Quickstart"))
        .collect();
    assert_eq!(fences.len(), 1, "expected one code block in the quickstart");
    let commands: Vec<_> = fences[0]
        .text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "expected two commands in the quickstart, got {commands:?}"
    );
}
