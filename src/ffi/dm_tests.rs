//! Tests of the C object adapter and helpers, with Rust `extern "C"` functions playing
//! the firmware's handlers.

use std::cell::{Cell, RefCell};

use super::*;
use crate::ffi::error::{ESTUARY_ERR_INVALID_ARGUMENT, ESTUARY_ERR_NOT_FOUND};

/// A Rust stand-in for firmware state: `def` comes first, so `obj_ptr` is also a
/// pointer to the whole struct (the C "container_of" pattern).
#[repr(C)]
struct Firmware {
    def: *const estuary_dm_object_def_t,
    instances: Vec<u16>,
    read_rc: Cell<c_int>,
    text: RefCell<String>,
    multi: RefCell<Vec<(u16, i64)>>,
    stale: Cell<usize>,
    helper_rcs: RefCell<Vec<c_int>>,
    executed: RefCell<Vec<(u16, Vec<u8>)>>,
    created: RefCell<Vec<u16>>,
    hooks: RefCell<Vec<&'static str>>,
}

unsafe fn fw<'a>(p: ObjPtr) -> &'a Firmware {
    // SAFETY: every test passes &Firmware::def as the obj_ptr.
    unsafe { &*p.cast::<Firmware>() }
}

unsafe extern "C" fn list_instances(p: ObjPtr, ctx: *mut estuary_dm_list_ctx_t) -> c_int {
    // SAFETY: test handler.
    let f = unsafe { fw(p) };
    f.stale.set(ctx as usize);
    for iid in f.instances.iter().rev() {
        // SAFETY: the live context.
        unsafe { estuary_dm_emit(ctx, *iid) };
    }
    // SAFETY: refusals, whatever the context.
    let rcs = unsafe {
        [
            estuary_dm_emit(ctx, 65535),
            estuary_dm_emit(ctx, f.instances[0]),
        ]
    };
    f.helper_rcs.borrow_mut().extend(rcs);
    0
}

unsafe extern "C" fn list_resources(
    _p: ObjPtr,
    iid: estuary_iid_t,
    ctx: *mut estuary_dm_resource_list_ctx_t,
) -> c_int {
    if iid > 1 {
        return ESTUARY_ERR_NOT_FOUND;
    }
    let p = ESTUARY_DM_RES_PRESENT;
    // SAFETY: the live context.
    unsafe {
        estuary_dm_emit_res(ctx, 5700, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_FLOAT);
        estuary_dm_emit_res(ctx, 5701, ESTUARY_DM_RES_RW, p, ESTUARY_DM_TYPE_STRING);
        estuary_dm_emit_res(ctx, 10, ESTUARY_DM_RES_RWM, p, ESTUARY_DM_TYPE_INTEGER);
        estuary_dm_emit_res(ctx, 5605, ESTUARY_DM_RES_E, p, ESTUARY_DM_TYPE_NONE);
        estuary_dm_emit_res(
            ctx,
            11,
            ESTUARY_DM_RES_R,
            ESTUARY_DM_RES_ABSENT,
            ESTUARY_DM_TYPE_OPAQUE,
        );
        estuary_dm_emit_res(ctx, 12, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_FLOAT);
        estuary_dm_emit_res(ctx, 13, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_INTEGER);
        estuary_dm_emit_res(ctx, 14, ESTUARY_DM_RES_W, p, ESTUARY_DM_TYPE_OPAQUE);
    }
    0
}

unsafe extern "C" fn read(
    p: ObjPtr,
    _iid: estuary_iid_t,
    rid: estuary_rid_t,
    ctx: *mut estuary_output_ctx_t,
) -> c_int {
    // SAFETY: test handler; every helper below is given the live context.
    unsafe {
        let f = fw(p);
        if f.read_rc.get() != 0 {
            return f.read_rc.get();
        }
        match rid {
            5700 => estuary_ret_double(ctx, 21.5),
            5701 => {
                let s = std::ffi::CString::new(f.text.borrow().clone()).unwrap_or_default();
                let bad = estuary_ret_string(ctx, c"\xff\xfe".as_ptr());
                f.helper_rcs.borrow_mut().push(bad);
                // The refusal spoils the read even though a good value follows.
                estuary_ret_string(ctx, s.as_ptr())
            }
            10 => {
                let early = estuary_ret_i64(ctx, 1);
                f.helper_rcs.borrow_mut().push(early);
                for (ri, v) in f.multi.borrow().iter() {
                    estuary_ret_instance(ctx, *ri);
                    estuary_ret_i64(ctx, *v);
                }
                0
            }
            // A bool for a float resource.
            12 => estuary_ret_bool(ctx, true),
            // Returns success without a value.
            _ => 0,
        }
    }
}

unsafe extern "C" fn write(
    p: ObjPtr,
    _iid: estuary_iid_t,
    rid: estuary_rid_t,
    ctx: *mut estuary_input_ctx_t,
) -> c_int {
    // SAFETY: test handler; every helper below is given the live context.
    unsafe {
        let f = fw(p);
        match rid {
            5701 => {
                let mut small = [0 as c_char; 4];
                let rc = estuary_get_string(ctx, small.as_mut_ptr(), small.len());
                f.helper_rcs.borrow_mut().push(rc);
                let mut wrong = 0i64;
                let rc = estuary_get_i64(ctx, &mut wrong);
                f.helper_rcs.borrow_mut().push(rc);
                let mut buf = [0 as c_char; 64];
                let rc = estuary_get_string(ctx, buf.as_mut_ptr(), buf.len());
                if rc != 0 {
                    return rc;
                }
                let s = std::ffi::CStr::from_ptr(buf.as_ptr());
                *f.text.borrow_mut() = s.to_string_lossy().into_owned();
                0
            }
            10 => {
                let mut riid = 0u16;
                let mut v = 0i64;
                let early = estuary_get_i64(ctx, &mut v);
                f.helper_rcs.borrow_mut().push(early);
                let mut out = Vec::new();
                loop {
                    match estuary_get_instance(ctx, &mut riid) {
                        0 => {}
                        ESTUARY_DM_END => break,
                        rc => return rc,
                    }
                    let rc = estuary_get_i64(ctx, &mut v);
                    if rc != 0 {
                        return rc;
                    }
                    out.push((riid, v));
                }
                *f.multi.borrow_mut() = out;
                0
            }
            14 => {
                let mut b = [0u8; 2];
                let mut n = 0usize;
                let small = estuary_get_bytes(ctx, b.as_mut_ptr().cast(), 2, &mut n);
                f.helper_rcs.borrow_mut().push(small);
                f.helper_rcs.borrow_mut().push(n as c_int);
                let mut big = [0u8; 8];
                let rc = estuary_get_bytes(ctx, big.as_mut_ptr().cast(), 8, &mut n);
                f.helper_rcs.borrow_mut().push(rc);
                f.helper_rcs.borrow_mut().push(n as c_int);
                0
            }
            _ => ESTUARY_ERR_METHOD_NOT_ALLOWED_,
        }
    }
}

const ESTUARY_ERR_METHOD_NOT_ALLOWED_: c_int = crate::ffi::error::ESTUARY_ERR_METHOD_NOT_ALLOWED;

unsafe extern "C" fn execute(
    p: ObjPtr,
    _iid: estuary_iid_t,
    rid: estuary_rid_t,
    args: *const c_char,
    size: usize,
) -> c_int {
    // SAFETY: test handler; `args` has `size` bytes plus a NUL.
    unsafe {
        let f = fw(p);
        let bytes = std::slice::from_raw_parts(args.cast::<u8>(), size + 1);
        f.executed.borrow_mut().push((rid, bytes.to_vec()));
    }
    0
}

unsafe extern "C" fn create(p: ObjPtr, iid: estuary_iid_t) -> c_int {
    // SAFETY: test handler.
    unsafe { fw(p) }.created.borrow_mut().push(iid);
    0
}

unsafe extern "C" fn begin(p: ObjPtr) -> c_int {
    // SAFETY: test handler.
    unsafe { fw(p) }.hooks.borrow_mut().push("begin");
    0
}

unsafe extern "C" fn validate(p: ObjPtr) -> c_int {
    // SAFETY: test handler.
    unsafe { fw(p) }.hooks.borrow_mut().push("validate");
    crate::ffi::error::ESTUARY_ERR_PRECONDITION_FAILED
}

unsafe extern "C" fn rollback(p: ObjPtr) -> c_int {
    // SAFETY: test handler.
    unsafe { fw(p) }.hooks.borrow_mut().push("rollback");
    -1
}

fn handlers() -> estuary_dm_handlers_t {
    estuary_dm_handlers_t {
        list_instances: Some(list_instances),
        list_resources: Some(list_resources),
        resource_read: Some(read),
        resource_write: Some(write),
        resource_execute: Some(execute),
        instance_create: Some(create),
        instance_remove: None,
        instance_reset: None,
        transaction_begin: Some(begin),
        transaction_validate: Some(validate),
        transaction_commit: None,
        transaction_rollback: Some(rollback),
    }
}

fn firmware(def: &estuary_dm_object_def_t) -> Box<Firmware> {
    Box::new(Firmware {
        def,
        instances: vec![1, 0],
        read_rc: Cell::new(0),
        text: RefCell::new("Cel".into()),
        multi: RefCell::new(vec![(3, -7), (1, 5)]),
        stale: Cell::new(0),
        helper_rcs: RefCell::new(Vec::new()),
        executed: RefCell::new(Vec::new()),
        created: RefCell::new(Vec::new()),
        hooks: RefCell::new(Vec::new()),
    })
}

fn object(f: &Firmware) -> CObject {
    // SAFETY: `f.def` points to a definition that outlives the object in each test.
    match unsafe { CObject::from_def(&f.def) } {
        Ok(o) => o,
        Err(r) => panic!("refused: {}", r.message),
    }
}

const DEF: estuary_dm_object_def_t = estuary_dm_object_def_t {
    oid: 3303,
    version: c"1.1".as_ptr(),
    handlers: estuary_dm_handlers_t {
        list_instances: Some(list_instances),
        list_resources: Some(list_resources),
        resource_read: None,
        resource_write: None,
        resource_execute: None,
        instance_create: None,
        instance_remove: None,
        instance_reset: None,
        transaction_begin: None,
        transaction_validate: None,
        transaction_commit: None,
        transaction_rollback: None,
    },
};

#[test]
fn ffi_dm_definitions_are_checked() {
    let code = |p: ObjPtr| unsafe { CObject::from_def(p) }.err().map(|r| r.code);
    assert_eq!(code(std::ptr::null()), Some(ESTUARY_ERR_NULL_ARGUMENT));
    let null_def: *const estuary_dm_object_def_t = std::ptr::null();
    assert_eq!(code(&null_def), Some(ESTUARY_ERR_NULL_ARGUMENT));
    for (change, expected) in [
        (
            estuary_dm_object_def_t { oid: 3, ..DEF },
            ESTUARY_ERR_INVALID_ARGUMENT,
        ),
        (
            estuary_dm_object_def_t { oid: 65535, ..DEF },
            ESTUARY_ERR_INVALID_ARGUMENT,
        ),
        (
            estuary_dm_object_def_t {
                version: c"1".as_ptr(),
                ..DEF
            },
            ESTUARY_ERR_INVALID_ARGUMENT,
        ),
        (
            estuary_dm_object_def_t {
                version: c"1.x".as_ptr(),
                ..DEF
            },
            ESTUARY_ERR_INVALID_ARGUMENT,
        ),
        (
            estuary_dm_object_def_t {
                version: c"\xff.1".as_ptr(),
                ..DEF
            },
            ESTUARY_ERR_INVALID_ARGUMENT,
        ),
    ] {
        let p: *const estuary_dm_object_def_t = &change;
        assert_eq!(code(&p), Some(expected));
    }
    let mut no_list = DEF;
    no_list.handlers.list_resources = None;
    let p: *const estuary_dm_object_def_t = &no_list;
    assert_eq!(code(&p), Some(ESTUARY_ERR_NULL_ARGUMENT));
    let mut no_version = DEF;
    no_version.version = std::ptr::null();
    let p: *const estuary_dm_object_def_t = &no_version;
    let obj = unsafe { CObject::from_def(&p) }.ok();
    assert_eq!(
        obj.as_ref().map(|o| o.version().to_string()),
        Some("1.0".into())
    );
    let p: *const estuary_dm_object_def_t = &DEF;
    let obj = unsafe { CObject::from_def(&p) }.ok();
    assert_eq!(
        obj.as_ref().map(|o| (o.oid(), o.version().to_string())),
        Some((3303, "1.1".into()))
    );
}

#[test]
fn ffi_dm_listing_sorts_and_refuses_bad_ids() {
    let def = estuary_dm_object_def_t {
        handlers: handlers(),
        ..DEF
    };
    let f = firmware(&def);
    let obj = object(&f);
    assert_eq!(obj.instances(), vec![0, 1]);
    assert_eq!(
        *f.helper_rcs.borrow(),
        vec![ESTUARY_ERR_INVALID_ARGUMENT, ESTUARY_ERR_ALREADY_EXISTS]
    );
    let defs = obj.resources(0).unwrap_or_default();
    let rids: Vec<u16> = defs.iter().map(|d| d.rid).collect();
    // Absent resource 11 is left out; the rest ascend.
    assert_eq!(rids, vec![10, 12, 13, 14, 5605, 5700, 5701]);
    assert_eq!(
        defs[0],
        ResourceDef::multiple(10, ValueKind::Integer, Operations::ReadWrite)
    );
    assert_eq!(defs[4], ResourceDef::executable(5605));
    assert_eq!(obj.resources(7).err(), Some(DmError::NotFound));
    // A context is usable only while its handler runs, and only as its own kind.
    let stale = f.stale.get();
    unsafe {
        assert_eq!(
            estuary_dm_emit(stale as *mut _, 4),
            ESTUARY_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            estuary_ret_i64(stale as *mut _, 4),
            ESTUARY_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            estuary_dm_emit(std::ptr::null_mut(), 4),
            ESTUARY_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            estuary_dm_emit_res(std::ptr::null_mut(), 1, 0, 1, 1),
            ESTUARY_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            estuary_ret_double(std::ptr::null_mut(), 1.0),
            ESTUARY_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            estuary_get_bool(std::ptr::null_mut(), std::ptr::null_mut()),
            ESTUARY_ERR_NULL_ARGUMENT
        );
    }
}

#[test]
fn ffi_dm_reads_check_what_the_handler_returns() {
    let def = estuary_dm_object_def_t {
        handlers: handlers(),
        ..DEF
    };
    let f = firmware(&def);
    let obj = object(&f);
    assert_eq!(
        obj.read(0, 5700),
        Ok(ResourceValue::Single(Value::Float(21.5)))
    );
    // Invalid UTF-8 was refused, so the read fails even though a string followed.
    assert_eq!(obj.read(0, 5701), Err(DmError::Internal));
    assert_eq!(
        f.helper_rcs.borrow().last(),
        Some(&ESTUARY_ERR_INVALID_ARGUMENT)
    );
    f.helper_rcs.borrow_mut().clear();
    // A multiple resource: a value before estuary_ret_instance() is refused.
    assert_eq!(obj.read(0, 10), Err(DmError::Internal));
    assert_eq!(*f.helper_rcs.borrow(), vec![ESTUARY_ERR_STATE]);
    assert_eq!(obj.read(0, 12), Err(DmError::Internal), "bool for a float");
    assert_eq!(obj.read(0, 13), Err(DmError::Internal), "no value");
    assert_eq!(
        obj.read(0, 14),
        Err(DmError::MethodNotAllowed),
        "write-only"
    );
    assert_eq!(
        obj.read(0, 5605),
        Err(DmError::MethodNotAllowed),
        "executable"
    );
    assert_eq!(obj.read(0, 11), Err(DmError::NotFound), "absent");
    // Handler errors become their CoAP codes.
    for rc in [-128, -129, -131, -132, -133, -140, -143, -160, -163] {
        f.read_rc.set(rc);
        let got = obj.read(0, 5700).err().map(DmError::coap_code);
        assert_eq!(got.map(|c| -c_int::from(c)), Some(rc));
    }
    for not_coap in [-1, -5, -10, 1, -127, -192, -69] {
        f.read_rc.set(not_coap);
        assert_eq!(obj.read(0, 5700).err().map(DmError::coap_code), Some(0xA0));
    }
}

#[test]
fn ffi_dm_writes_give_values_and_check_buffers() {
    let def = estuary_dm_object_def_t {
        handlers: handlers(),
        ..DEF
    };
    let f = firmware(&def);
    let mut obj = object(&f);
    let w = obj.write(
        0,
        5701,
        ResourceValue::Single(Value::String("Celsius".into())),
    );
    assert_eq!(w, Ok(()));
    assert_eq!(*f.text.borrow(), "Celsius");
    assert_eq!(
        *f.helper_rcs.borrow(),
        vec![ESTUARY_ERR_NO_SPACE, ESTUARY_ERR_BAD_REQUEST]
    );
    f.helper_rcs.borrow_mut().clear();
    // Text as it arrives when the type is unknown is converted too.
    let w = obj.write(
        0,
        10,
        ResourceValue::Multiple(vec![
            (0, Value::String("42".into())),
            (9, Value::Integer(-1)),
        ]),
    );
    assert_eq!(w, Ok(()));
    assert_eq!(*f.multi.borrow(), vec![(0, 42), (9, -1)]);
    assert_eq!(*f.helper_rcs.borrow(), vec![ESTUARY_ERR_STATE]);
    assert_eq!(
        obj.read(0, 10).ok(),
        None,
        "the test handler's early value spoils reads"
    );
    f.helper_rcs.borrow_mut().clear();
    let w = obj.write(
        0,
        10,
        ResourceValue::Multiple(vec![(0, Value::Boolean(true))]),
    );
    assert_eq!(w, Err(DmError::BadRequest));
    let w = obj.write(0, 10, ResourceValue::Single(Value::Integer(1)));
    assert_eq!(
        w,
        Err(DmError::BadRequest),
        "single value for a multiple resource"
    );
    f.helper_rcs.borrow_mut().clear();
    let w = obj.write(0, 14, ResourceValue::Single(Value::Opaque(vec![1, 2, 3])));
    assert_eq!(w, Ok(()));
    // Too small: NO_SPACE and the size left untouched (0); then 3 bytes.
    assert_eq!(*f.helper_rcs.borrow(), vec![ESTUARY_ERR_NO_SPACE, 0, 0, 3]);
    assert_eq!(
        obj.write(0, 5700, ResourceValue::Single(Value::Float(1.0))),
        Err(DmError::MethodNotAllowed)
    );
    assert_eq!(
        obj.write(0, 99, ResourceValue::Single(Value::Float(1.0))),
        Err(DmError::NotFound)
    );
}

#[test]
fn ffi_dm_execute_create_delete_and_transactions() {
    let def = estuary_dm_object_def_t {
        handlers: handlers(),
        ..DEF
    };
    let f = firmware(&def);
    let mut obj = object(&f);
    assert_eq!(obj.execute(0, 5605, b"5='x'"), Ok(()));
    assert_eq!(obj.execute(0, 5605, b""), Ok(()));
    assert_eq!(
        *f.executed.borrow(),
        vec![(5605, b"5='x'\0".to_vec()), (5605, b"\0".to_vec())]
    );
    assert_eq!(obj.create_instance(2), Ok(()));
    assert_eq!(obj.create_instance(1), Err(DmError::BadRequest), "taken");
    assert_eq!(*f.created.borrow(), vec![2]);
    assert_eq!(
        obj.delete_instance(0),
        Err(DmError::MethodNotAllowed),
        "no handler"
    );
    assert_eq!(obj.delete_instance(5), Err(DmError::NotFound));
    assert_eq!(obj.transaction_begin(), Ok(()));
    assert_eq!(obj.transaction_validate(), Err(DmError::Code(0x8C)));
    obj.transaction_rollback();
    assert_eq!(
        obj.transaction_commit(),
        Ok(()),
        "no handler: nothing to do"
    );
    assert_eq!(*f.hooks.borrow(), vec!["begin", "validate", "rollback"]);
    assert_eq!(obj.reset_instance(0), Ok(()));
}

#[test]
fn ffi_dm_multiple_resources_read_back() {
    unsafe extern "C" fn read_multi(
        p: ObjPtr,
        _iid: estuary_iid_t,
        _rid: estuary_rid_t,
        ctx: *mut estuary_output_ctx_t,
    ) -> c_int {
        // SAFETY: test handler with the live context.
        unsafe {
            let f = fw(p);
            let rcs = [
                estuary_ret_instance(ctx, 65535),
                estuary_ret_instance(ctx, 2),
                estuary_ret_instance(ctx, 3),
                estuary_ret_u64(ctx, 5),
                estuary_ret_instance(ctx, 0),
                estuary_ret_i64(ctx, -3),
                estuary_ret_instance(ctx, 0),
            ];
            f.helper_rcs.borrow_mut().extend(rcs);
        }
        0
    }
    let mut h = handlers();
    h.resource_read = Some(read_multi);
    let def = estuary_dm_object_def_t { handlers: h, ..DEF };
    let f = firmware(&def);
    let obj = object(&f);
    // Any refusal spoils the read: 65535, a second riid while 2 has no value, a repeat.
    assert_eq!(obj.read(0, 10), Err(DmError::Internal));
    assert_eq!(
        *f.helper_rcs.borrow(),
        vec![
            ESTUARY_ERR_INVALID_ARGUMENT,
            0,
            ESTUARY_ERR_STATE,
            0,
            0,
            0,
            ESTUARY_ERR_ALREADY_EXISTS
        ]
    );
    unsafe extern "C" fn read_multi_ok(
        _p: ObjPtr,
        _iid: estuary_iid_t,
        _rid: estuary_rid_t,
        ctx: *mut estuary_output_ctx_t,
    ) -> c_int {
        // SAFETY: test handler with the live context.
        unsafe {
            estuary_ret_instance(ctx, 7);
            estuary_ret_u64(ctx, 5);
            estuary_ret_instance(ctx, 1);
            estuary_ret_i64(ctx, -3)
        }
    }
    h.resource_read = Some(read_multi_ok);
    let def = estuary_dm_object_def_t { handlers: h, ..DEF };
    let f = firmware(&def);
    let obj = object(&f);
    assert_eq!(
        obj.read(0, 10),
        Ok(ResourceValue::Multiple(vec![
            (1, Value::Integer(-3)),
            (7, Value::Integer(5))
        ]))
    );
    assert_eq!(obj.resource_instances(0, 10), Ok(vec![1, 7]));
}

#[test]
fn ffi_dm_get_conversions() {
    assert_eq!(as_i64(&Value::Opaque(vec![0xFF, 0xFE])), Some(-2));
    assert_eq!(as_i64(&Value::Unsigned(u64::MAX)), None);
    assert_eq!(as_u64(&Value::Integer(-1)), None);
    assert_eq!(as_u64(&Value::Opaque(vec![0xFF; 8])), Some(u64::MAX));
    assert_eq!(
        as_f64(&Value::Opaque(1.5f32.to_be_bytes().to_vec())),
        Some(1.5)
    );
    assert_eq!(as_f64(&Value::String("NaN".into())), None);
    assert_eq!(as_f64(&Value::Integer(3)), Some(3.0));
    assert_eq!(as_bool(&Value::Opaque(vec![2])), None);
    assert_eq!(as_bool(&Value::String("1".into())), Some(true));
    assert_eq!(as_objlnk(&Value::String("3:0".into())), Some((3, 0)));
    assert_eq!(as_objlnk(&Value::Opaque(vec![0, 3, 0, 1])), Some((3, 1)));
    assert_eq!(as_str(&Value::Opaque(vec![0xFF])), None);
    assert_eq!(coerce(Value::Integer(-1), ValueKind::Unsigned), None);
    assert_eq!(
        coerce(Value::Integer(5), ValueKind::Time),
        Some(Value::Time(5))
    );
    assert_eq!(coerce(Value::Float(1.0), ValueKind::Integer), None);
}
