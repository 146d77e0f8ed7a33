//! An image folder is listed as torchvision's `ImageFolder` (0.29) lists it: the same files,
//! in the same order, with the same labels. The tree below was checked against
//! `ImageFolder(root).samples`.

use std::path::Path;

use soup_eval::images::ImageList;

/// `ImageFolder` keeps every file whose name ends with an image extension (a file named just
/// `.png` too), and walks a class folder in `sorted(os.walk(...))` order: folders by their path
/// as a string (`cat/sub-x` sorts before `cat/sub/deep`, '-' being before '/'), each one's
/// files by name.
#[test]
fn a_folder_is_listed_in_imagefolders_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for file in [
        "cat/1.png",
        "cat/.png",
        "cat/B.PNG",
        "cat/a.Jpg",
        "cat/sub x.png",
        "cat/notes.txt",
        "cat/.DS_Store",
        "cat/png",
        "cat/sub/x.png",
        "cat/sub/deep/z.png",
        "cat/sub-x/y.png",
        "dog/d.png",
    ] {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not decoded here").unwrap();
    }
    let list = ImageList::open(root).unwrap();
    assert_eq!(
        list.classes.as_deref(),
        Some(&["cat".to_string(), "dog".to_string()][..])
    );
    let listed: Vec<(String, usize)> = list
        .entries
        .iter()
        .map(|(p, label)| {
            let relative = p.strip_prefix(root).unwrap_or(Path::new("?"));
            (relative.to_string_lossy().into_owned(), *label)
        })
        .collect();
    let expected = [
        ("cat/.png", 0),
        ("cat/1.png", 0),
        ("cat/B.PNG", 0),
        ("cat/a.Jpg", 0),
        ("cat/sub x.png", 0),
        ("cat/sub/x.png", 0),
        ("cat/sub-x/y.png", 0),
        ("cat/sub/deep/z.png", 0),
        ("dog/d.png", 1),
    ]
    .map(|(p, l)| (p.to_string(), l));
    assert_eq!(listed, expected);
}
