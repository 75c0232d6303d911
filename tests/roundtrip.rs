//! Property tests of the text form: random well-formed programs survive print → parse → print
//! unchanged (in both print modes), and no input, however mangled, makes the parser panic.

mod common;

use common::program_gen::program;
use proptest::prelude::*;
use tpc::ir::{parse, print, PrintMode, SourceFile};

fn render(name: &str, text: &str, d: &[tpc::Diagnostic]) -> String {
    tpc::ir::diag::render(&SourceFile::new(name, text), d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_round_trip(text in program()) {
        let g = parse(&SourceFile::new("gen.ir", &text)).map_err(|d| TestCaseError::fail(format!("{text}\n{}", render("gen.ir", &text, &d))))?;
        // Every op's factor rule fits its shapes.
        for &v in g.values() {
            let tys: Vec<&tpc::ir::TensorType> = g.operands(v).into_iter().map(|o| g.ty(o)).collect();
            tpc::ir::check_rule(&tpc::ir::rule_of(&g, v), &tys, &g.ty(v).shape)
                .map_err(|e| TestCaseError::fail(format!("{text}\n%{}: {e}", g.name(v))))?;
        }
        // Propagation never leaves an invalid graph, and its result round-trips too.
        let mut propagated = g.clone();
        let mut pm = tpc::passes::PassManager::parse("propagate-sharding").expect("pipeline");
        pm.verify_each = true;
        pm.run(&mut propagated).map_err(|e| TestCaseError::fail(format!("{text}\n{e:?}")))?;
        // Resharding leaves a valid graph that computes the same (collectives are the identity on
        // global values), or says plainly that a layout change is not supported yet.
        let mut resharded = propagated.clone();
        let mut rs = tpc::passes::PassManager::parse("insert-resharding").expect("pipeline");
        rs.verify_each = true;
        match rs.run(&mut resharded) {
            Ok(_) => {
                let b: std::collections::BTreeMap<String, i64> =
                    [("B", 2), ("S", 3), ("E", 2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let inputs = tpc::runtime::random_inputs(&g, &b, 5).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = tpc::runtime::run_reference(&g, &inputs, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got = tpc::runtime::run_reference(&resharded, &inputs, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (w, x) in want.iter().zip(&got) {
                    let same = w.to_f32_vec().iter().zip(x.to_f32_vec()).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                    prop_assert!(same, "{}\n{}", text, print(&resharded, PrintMode::Full));
                }
                // And on N CPU ranks it equals the reference, within the dtype's rounding.
                let sizes = resharded.mesh.resolve(Some([1, 3, 6][resharded.mesh.axes.len().min(2)])).expect("mesh");
                let mesh = tpc::runtime::ranks::MeshSizes(sizes.into_iter().map(|(n, s)| (n, s as usize)).collect());
                let ranked = tpc::runtime::ranks::run_sharded(&resharded, &mesh, &inputs, &b, std::time::Duration::from_secs(60))
                    .map_err(|e| TestCaseError::fail(format!("{text}\n{}\n{e}", print(&resharded, PrintMode::Full))))?;
                // The same program compiled to kernels and host programs, on the CPU executor.
                let devices = mesh.world() as i64;
                let artifacts = tpc::compile::codegen(resharded.clone(), devices, &b)
                    .map_err(|e| TestCaseError::fail(format!("{text}\n{}\n{}", print(&resharded, PrintMode::Full), e.render())))?;
                let hosted = tpc::runtime::host::run_host_programs(&artifacts.sharded, &artifacts.compiled, &mesh, &inputs, &b, std::time::Duration::from_secs(60))
                    .map_err(|e| TestCaseError::fail(format!("{text}\n{}\nhost programs: {e}", print(&resharded, PrintMode::Full))))?;
                for (w, x) in want.iter().zip(&ranked).chain(want.iter().zip(&hosted)) {
                    let peak = w.max_abs().max(1e-3);
                    // Computed in bf16 anywhere (then perhaps cast to f32): bf16's rounding.
                    let low = g.values().iter().any(|&v| g.ty(v).dtype != tpc::ir::DType::F32);
                    let tol = if w.dtype() == tpc::ir::DType::F32 && !low { 1e-4 } else { 1.0 / 16.0 };
                    let err = w.to_f32_vec().iter().zip(x.to_f32_vec()).map(|(a, b)| if a.is_nan() && b.is_nan() { 0.0 } else { (a - b).abs() as f64 }).fold(0.0, f64::max);
                    prop_assert!(err <= tol * peak, "error {} vs peak {}\n{}\n{}", err, peak, text, print(&resharded, PrintMode::Full));
                }
            }
            Err(tpc::passes::Error::Unsupported(_) | tpc::passes::Error::Refused { .. }) => {}
            Err(e) => return Err(TestCaseError::fail(format!("{text}\n{e:?}"))),
        }
        let full = print(&propagated, PrintMode::Full);
        let back = parse(&SourceFile::new("propagated.ir", &full)).map_err(|d| TestCaseError::fail(format!("{full}\n{}", render("propagated.ir", &full, &d))))?;
        prop_assert_eq!(print(&back, PrintMode::Full), full);
        for mode in [PrintMode::Source, PrintMode::Full] {
            let once = print(&g, mode);
            let g2 = parse(&SourceFile::new("once.ir", &once)).map_err(|d| TestCaseError::fail(format!("{once}\n{}", render("once.ir", &once, &d))))?;
            prop_assert_eq!(print(&g2, mode), once);
            // The printed program means the same: same ops, attributes and types.
            let ops = |g: &tpc::Graph| g.values().iter().map(|&v| (g.op(v).clone(), g.ty(v).clone())).collect::<Vec<_>>();
            prop_assert_eq!(ops(&g2), ops(&g));
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,300}") {
        let _ = parse(&SourceFile::new("junk.ir", &text));
    }

    #[test]
    fn mangled_examples_never_panic(cuts in prop::collection::vec((any::<prop::sample::Index>(), 0..12usize, "(?s).{0,6}"), 1..6)) {
        for path in common::ir_files("examples") {
            let mut text = std::fs::read_to_string(&path).expect("readable");
            for (at, len, insert) in &cuts {
                let mut start = at.index(text.len().max(1)).min(text.len());
                while !text.is_char_boundary(start) { start -= 1; }
                let mut end = (start + len).min(text.len());
                while !text.is_char_boundary(end) { end -= 1; }
                text.replace_range(start..end, insert);
            }
            let file = SourceFile::new("mangled.ir", &text);
            if let Err(d) = parse(&file) {
                // Rendering must not panic either, and every span lies within the text.
                let _ = tpc::ir::diag::render(&file, &d);
                prop_assert!(d.iter().all(|x| x.span.end as usize <= text.len()));
            }
        }
    }
}

proptest! {
    // Each case compiles its kernels' CUDA C with the host's C++ compiler: few cases.
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random programs' generated CUDA C, run by the CUDA emulator through the host programs,
    /// equals the reference within the dtype's rounding (where a C++ compiler is present; CI
    /// requires one with TPC_REQUIRE_CXX=1).
    #[test]
    fn random_programs_run_their_cuda_c(text in program()) {
        if !common::present_or_skip(common::cxx_missing(), "TPC_REQUIRE_CXX") {
            return Ok(());
        }
        let g = parse(&SourceFile::new("gen.ir", &text)).map_err(|d| TestCaseError::fail(format!("{text}\n{}", render("gen.ir", &text, &d))))?;
        let b: std::collections::BTreeMap<String, i64> =
            [("B", 2), ("S", 3), ("E", 2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let devices = [1, 3, 6][g.mesh.axes.len().min(2)];
        // Refused plainly, as a user would be told: a split over more devices than its factor
        // has elements (written, or at the binding), or a layout change the passes do not
        // support (see above).
        let Ok(sizes) = tpc::resolve_devices(&g, devices, &SourceFile::new("gen.ir", &text)) else {
            return Ok(());
        };
        // Or a symbol's split that the binding leaves ranks without (`B@tp`, B = 2 over 3).
        if !tpc::ir::verify::verify_bound_splits(&g, &sizes, &b).is_empty() {
            return Ok(());
        }
        // Host templates for every binding where the binding divides every symbolic split;
        // otherwise (an uneven split of `B` over 3, say) specialized to the binding, as `tpc run` does.
        let mut options = tpc::CompileOptions { devices: Some(devices), bindings: b.clone(), ..tpc::CompileOptions::default() };
        let compiled = match tpc::compile("gen.ir", &text, &options) {
            Err(tpc::Error::Codegen(tpc::codegen::Error::Binding { .. })) => {
                options.specialize = true;
                tpc::compile("gen.ir", &text, &options)
            }
            other => other,
        };
        let artifacts = match compiled {
            Ok(a) => a,
            Err(tpc::Error::Pass(tpc::passes::Error::Unsupported(_))) => return Ok(()),
            // A layout change resharding cannot make yet, located (`Error::Refused`).
            Err(tpc::Error::Program { diagnostics, .. })
                if diagnostics.iter().all(|d| d.message.starts_with("not supported yet")) =>
            {
                return Ok(())
            }
            Err(e) => return Err(TestCaseError::fail(format!("{text}\n{}", e.render()))),
        };
        let inputs = tpc::runtime::random_inputs(&g, &b, 5).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = tpc::runtime::run_reference(&g, &inputs, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = tpc::run_emulated(&artifacts, &inputs)
            .map_err(|e| TestCaseError::fail(format!("{text}\n{}\nemulated: {e}", artifacts.cuda)))?;
        for (w, x) in want.iter().zip(&got) {
            let peak = w.max_abs().max(1e-3);
            let low = g.values().iter().any(|&v| g.ty(v).dtype != tpc::ir::DType::F32);
            let tol = if w.dtype() == tpc::ir::DType::F32 && !low { 1e-4 } else { 1.0 / 16.0 };
            let err = w.to_f32_vec().iter().zip(x.to_f32_vec()).map(|(a, b)| if a.is_nan() && b.is_nan() { 0.0 } else { (a - b).abs() as f64 }).fold(0.0, f64::max);
            prop_assert!(err <= tol * peak, "error {} vs peak {}\n{}\n{}", err, peak, text, artifacts.cuda);
        }
    }
}
