use engine::ops::SHADERS;

#[test]
fn naga_parses_and_validates_every_shader() {
    let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    // An executable copied to another machine (tools/gpu-check.sh --pack)
    // finds the shaders copied beside it, in its working directory.
    let dir = match built_in.is_dir() {
        true => built_in,
        false => std::path::PathBuf::from("shaders"),
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        SHADERS.len(),
        "every file in shaders/ is registered in ops::SHADERS"
    );
    for path in files {
        let src = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
        let name = path.file_stem().unwrap().to_str().unwrap();
        let registered = SHADERS.iter().find(|s| s.name == name).expect("registered");
        assert_eq!(
            registered.source, src,
            "{name}: embedded source is the file"
        );
        // The vec4 form the engine builds from a shader written over V.
        if src.contains("alias V = f32;") {
            let v4 = engine::gpu::vec4_source(registered);
            let module = naga::front::wgsl::parse_str(&v4)
                .unwrap_or_else(|e| panic!("{name} (vec4): {}", e.emit_to_string(&v4)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} (vec4): {}", e.emit_to_string(&v4)));
        }
    }
}
