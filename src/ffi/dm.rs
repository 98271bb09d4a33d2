//! Firmware-defined objects from C (SPEC 7.4): the object definition with its handlers,
//! estuary_register_object(), the emit helpers for listing instances and resources, the
//! value helpers `estuary_ret_*` (a read handler's output) and `estuary_get_*` (a write
//! handler's input), and estuary_notify_changed().
//!
//! [`CObject`] adapts a C definition to [`crate::dm::Object`]. A handler only ever sees
//! opaque context pointers that live on this module's stack for the duration of the call;
//! every helper checks that the pointer it gets is the context of a handler running on
//! this thread right now (a thread-local list of live contexts) before touching it, so a
//! stale, forged or wrong-kind pointer is refused instead of dereferenced. Handlers run
//! only inside estuary_event_loop_run(), estuary_notify_changed() or estuary_delete(), on
//! the caller's thread.
//! Handler results are 0 or a negated CoAP code, which becomes the response code.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};

use super::error::{
    ESTUARY_ERR_ALREADY_EXISTS, ESTUARY_ERR_BAD_REQUEST, ESTUARY_ERR_NOT_SUPPORTED,
    ESTUARY_ERR_NO_SPACE, ESTUARY_ERR_NULL_ARGUMENT, ESTUARY_ERR_STATE,
};
use super::lifecycle::{estuary_t, with_estuary};
use super::objects::{estuary_iid_t, ESTUARY_ID_INVALID};
use super::{arg_mut, arg_ref, bytes_arg, ffi_boundary, opt_str_arg, Refusal};
use crate::dm::{
    oid, DmError, Object, Operations, Path, ResourceDef, ResourceValue, Value, ValueKind,
};

/// An Object ID.
pub type estuary_oid_t = u16;
/// A Resource ID.
pub type estuary_rid_t = u16;
/// A Resource Instance ID (of a multiple resource).
pub type estuary_riid_t = u16;

/// What a resource allows, as in object definitions: one of the ESTUARY_DM_RES_* kinds.
pub type estuary_dm_resource_kind_t = c_int;
/// Readable single resource.
pub const ESTUARY_DM_RES_R: estuary_dm_resource_kind_t = 0;
/// Writable single resource.
pub const ESTUARY_DM_RES_W: estuary_dm_resource_kind_t = 1;
/// Readable and writable single resource.
pub const ESTUARY_DM_RES_RW: estuary_dm_resource_kind_t = 2;
/// Readable multiple resource.
pub const ESTUARY_DM_RES_RM: estuary_dm_resource_kind_t = 3;
/// Writable multiple resource.
pub const ESTUARY_DM_RES_WM: estuary_dm_resource_kind_t = 4;
/// Readable and writable multiple resource.
pub const ESTUARY_DM_RES_RWM: estuary_dm_resource_kind_t = 5;
/// Executable resource.
pub const ESTUARY_DM_RES_E: estuary_dm_resource_kind_t = 6;

/// Whether a listed resource currently exists in the instance.
pub type estuary_dm_resource_presence_t = c_int;
/// The resource is defined but has no value in this instance now (left out of reads).
pub const ESTUARY_DM_RES_ABSENT: estuary_dm_resource_presence_t = 0;
/// The resource exists in this instance.
pub const ESTUARY_DM_RES_PRESENT: estuary_dm_resource_presence_t = 1;

/// The data type of a resource (LwM2M 1.1 Appendix C). TLV and text/plain carry no type,
/// so Estuary needs it to decode what a server writes.
pub type estuary_dm_type_t = c_int;
/// No value: executable resources.
pub const ESTUARY_DM_TYPE_NONE: estuary_dm_type_t = 0;
/// UTF-8 string (estuary_ret_string / estuary_get_string).
pub const ESTUARY_DM_TYPE_STRING: estuary_dm_type_t = 1;
/// Signed integer (estuary_ret_i64 / estuary_get_i64).
pub const ESTUARY_DM_TYPE_INTEGER: estuary_dm_type_t = 2;
/// Unsigned integer (estuary_ret_u64 / estuary_get_u64).
pub const ESTUARY_DM_TYPE_UNSIGNED: estuary_dm_type_t = 3;
/// Float (estuary_ret_double / estuary_get_double).
pub const ESTUARY_DM_TYPE_FLOAT: estuary_dm_type_t = 4;
/// Boolean (estuary_ret_bool / estuary_get_bool).
pub const ESTUARY_DM_TYPE_BOOLEAN: estuary_dm_type_t = 5;
/// Opaque bytes (estuary_ret_bytes / estuary_get_bytes).
pub const ESTUARY_DM_TYPE_OPAQUE: estuary_dm_type_t = 6;
/// Time, seconds since the Unix epoch (estuary_ret_i64 / estuary_get_i64).
pub const ESTUARY_DM_TYPE_TIME: estuary_dm_type_t = 7;
/// Object link (estuary_ret_objlnk / estuary_get_objlnk).
pub const ESTUARY_DM_TYPE_OBJLNK: estuary_dm_type_t = 8;
/// CoRE link string (estuary_ret_string / estuary_get_string).
pub const ESTUARY_DM_TYPE_CORELNK: estuary_dm_type_t = 9;

/// Returned by estuary_get_instance() when every resource instance has been visited.
pub const ESTUARY_DM_END: c_int = 1;

/// What every handler gets back as `obj_ptr`: the `def_ptr` given to
/// estuary_register_object(), a pointer to a pointer to the object definition.
pub type estuary_dm_obj_ptr_t = *const *const estuary_dm_object_def_t;
type ObjPtr = estuary_dm_obj_ptr_t;

/// The context of a list_instances handler (for estuary_dm_emit()).
pub struct estuary_dm_list_ctx_t {
    ids: Vec<u16>,
}

/// The context of a list_resources handler (for estuary_dm_emit_res()).
pub struct estuary_dm_resource_list_ctx_t {
    defs: Vec<ResourceDef>,
    seen: Vec<u16>,
}

/// The context of a resource_read handler (for the estuary_ret_* helpers).
pub struct estuary_output_ctx_t {
    def: ResourceDef,
    single: Option<Value>,
    instances: Vec<(u16, Value)>,
    pending_riid: Option<u16>,
    refused: bool,
}

/// The context of a resource_write handler (for the estuary_get_* helpers).
pub struct estuary_input_ctx_t {
    value: ResourceValue,
    /// For a multiple resource: the instance chosen by the last estuary_get_instance().
    cursor: Option<usize>,
    next: usize,
}

/// An object definition. Pass estuary_register_object() a pointer to a pointer to it: the
/// same `obj_ptr` comes back to every handler, so firmware can keep its own state next to
/// the definition. Estuary copies `oid`, `version` and the handlers at registration.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct estuary_dm_object_def_t {
    /// The Object ID; 0 to 3 are Estuary's own, 65535 is reserved.
    pub oid: estuary_oid_t,
    /// The object version advertised at registration, e.g. "1.1"; NULL = "1.0".
    pub version: *const c_char,
    /// The handlers.
    pub handlers: estuary_dm_handlers_t,
}

/// The handlers of an object. Each returns 0 or a negated CoAP code (ESTUARY_ERR_NOT_FOUND,
/// ESTUARY_ERR_METHOD_NOT_ALLOWED, ESTUARY_ERR_BAD_REQUEST, ...), which the server gets
/// as the response code; any other negative value answers 5.00. Handlers run only inside
/// estuary_event_loop_run(), estuary_notify_changed() and estuary_delete(), on the calling
/// thread and never two at once; other Estuary calls on the same client made from a
/// handler return ESTUARY_ERR_BUSY (estuary_event_loop_interrupt() excepted). The context
/// pointers are valid only during the call. When a multi-resource Write or Create fails,
/// transaction_rollback runs and the values read before the request are written back.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct estuary_dm_handlers_t {
    /// Required: emits every Instance ID with estuary_dm_emit() (any order).
    pub list_instances: Option<
        unsafe extern "C" fn(
            obj_ptr: estuary_dm_obj_ptr_t,
            ctx: *mut estuary_dm_list_ctx_t,
        ) -> c_int,
    >,
    /// Required: emits the resources of instance `iid` with estuary_dm_emit_res().
    pub list_resources: Option<
        unsafe extern "C" fn(
            obj_ptr: estuary_dm_obj_ptr_t,
            iid: estuary_iid_t,
            ctx: *mut estuary_dm_resource_list_ctx_t,
        ) -> c_int,
    >,
    /// Reads a resource: one estuary_ret_* call for a single resource; for a multiple
    /// resource, estuary_ret_instance() then one estuary_ret_* per resource instance.
    /// NULL: reads answer 4.05.
    pub resource_read: Option<
        unsafe extern "C" fn(
            obj_ptr: estuary_dm_obj_ptr_t,
            iid: estuary_iid_t,
            rid: estuary_rid_t,
            ctx: *mut estuary_output_ctx_t,
        ) -> c_int,
    >,
    /// Writes a resource: estuary_get_* gives the value; for a multiple resource the new
    /// set of resource instances is visited with estuary_get_instance(). NULL: 4.05.
    pub resource_write: Option<
        unsafe extern "C" fn(
            obj_ptr: estuary_dm_obj_ptr_t,
            iid: estuary_iid_t,
            rid: estuary_rid_t,
            ctx: *mut estuary_input_ctx_t,
        ) -> c_int,
    >,
    /// Executes a resource. `args` holds the `args_size` argument bytes of the request
    /// followed by a NUL (so text arguments can be used as a string). NULL: 4.05.
    pub resource_execute: Option<
        unsafe extern "C" fn(
            obj_ptr: estuary_dm_obj_ptr_t,
            iid: estuary_iid_t,
            rid: estuary_rid_t,
            args: *const c_char,
            args_size: usize,
        ) -> c_int,
    >,
    /// Creates instance `iid` (a server's Create). NULL: 4.05.
    pub instance_create:
        Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t, iid: estuary_iid_t) -> c_int>,
    /// Removes instance `iid` (a server's Delete). NULL: 4.05.
    pub instance_remove:
        Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t, iid: estuary_iid_t) -> c_int>,
    /// Optional: before a Write-replace of instance `iid`, drops the values of its
    /// writable resources. NULL: nothing is dropped.
    pub instance_reset:
        Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t, iid: estuary_iid_t) -> c_int>,
    /// Optional: starts a transaction around a Write or Create of several resources.
    pub transaction_begin: Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t) -> c_int>,
    /// Optional: checks that the written values are consistent; an error rolls back.
    pub transaction_validate: Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t) -> c_int>,
    /// Optional: makes the transaction's changes final.
    pub transaction_commit: Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t) -> c_int>,
    /// Optional: undoes the changes since transaction_begin (its result is only logged).
    pub transaction_rollback: Option<unsafe extern "C" fn(obj_ptr: estuary_dm_obj_ptr_t) -> c_int>,
}

// ---- live contexts --------------------------------------------------------------------

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum CtxKind {
    List,
    ResourceList,
    Output,
    Input,
}

trait Ctx {
    const KIND: CtxKind;
    const NAME: &'static str;
}

impl Ctx for estuary_dm_list_ctx_t {
    const KIND: CtxKind = CtxKind::List;
    const NAME: &'static str = "ctx (a list_instances context)";
}
impl Ctx for estuary_dm_resource_list_ctx_t {
    const KIND: CtxKind = CtxKind::ResourceList;
    const NAME: &'static str = "ctx (a list_resources context)";
}
impl Ctx for estuary_output_ctx_t {
    const KIND: CtxKind = CtxKind::Output;
    const NAME: &'static str = "ctx (a resource_read context)";
}
impl Ctx for estuary_input_ctx_t {
    const KIND: CtxKind = CtxKind::Input;
    const NAME: &'static str = "ctx (a resource_write context)";
}

thread_local! {
    /// Addresses of the contexts whose handler is running on this thread (a stack: a
    /// handler may run another client's loop, whose handlers then nest).
    static LIVE: RefCell<Vec<(usize, CtxKind)>> = const { RefCell::new(Vec::new()) };
}

/// Removes a context from [`LIVE`] when the handler call ends, however it ends.
struct LiveGuard(usize, CtxKind);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let entry = (self.0, self.1);
        LIVE.with(|l| {
            let mut l = l.borrow_mut();
            if let Some(pos) = l.iter().rposition(|e| *e == entry) {
                l.remove(pos);
            }
        });
    }
}

/// Calls `f` with a pointer to `ctx` that the helpers accept while `f` runs.
fn with_live<C: Ctx, R>(ctx: &mut C, f: impl FnOnce(*mut C) -> R) -> R {
    let p: *mut C = ctx;
    LIVE.with(|l| l.borrow_mut().push((p as usize, C::KIND)));
    let _guard = LiveGuard(p as usize, C::KIND);
    f(p)
}

/// The context behind a helper's `ctx` argument, if it is live and of the right kind.
///
/// # Safety
/// None beyond the C API's: the pointer is compared with the live contexts before it is
/// dereferenced, so any value is safe.
unsafe fn live_ctx<'a, C: Ctx>(p: *mut C) -> Result<&'a mut C, Refusal> {
    if p.is_null() {
        return Err(Refusal::null(C::NAME));
    }
    let live = LIVE.with(|l| l.borrow().contains(&(p as usize, C::KIND)));
    if !live {
        return Err(Refusal::invalid(format!(
            "{} is not the context of a handler running now (stale, or of another kind)",
            C::NAME
        )));
    }
    // SAFETY: `p` points to a context owned by a CObject call frame on this thread that is
    // waiting for the handler to return; nothing else touches it meanwhile.
    Ok(unsafe { &mut *p })
}

// ---- the adapter ----------------------------------------------------------------------

/// A handler's result as a data-model error: 0 is success, a negated CoAP code is that
/// code, anything else is a firmware bug answered with 5.00.
fn handler_result(rc: c_int, what: &str, oid: u16) -> Result<(), DmError> {
    if rc == 0 {
        return Ok(());
    }
    let code = rc.checked_neg().and_then(|c| u8::try_from(c).ok());
    match code {
        Some(c) if (0x80..=0xBF).contains(&c) => Err(dm_error_of_code(c)),
        _ => {
            ::log::warn!(
                target: "estuary::ffi",
                "/{oid}: {what} handler returned {rc}, which is not 0 or a negated CoAP error code; answering 5.00"
            );
            Err(DmError::Internal)
        }
    }
}

/// A CoAP error code (4.xx or 5.xx) as the [`DmError`] the data model understands.
fn dm_error_of_code(c: u8) -> DmError {
    use crate::coap::code;
    match c {
        code::BAD_REQUEST => DmError::BadRequest,
        code::UNAUTHORIZED => DmError::Unauthorized,
        code::NOT_FOUND => DmError::NotFound,
        code::METHOD_NOT_ALLOWED => DmError::MethodNotAllowed,
        code::NOT_ACCEPTABLE => DmError::NotAcceptable,
        code::UNSUPPORTED_CONTENT_FORMAT => DmError::UnsupportedContentFormat,
        code::INTERNAL_SERVER_ERROR => DmError::Internal,
        other => DmError::Code(other),
    }
}

/// A C object definition as a [`crate::dm::Object`].
pub(crate) struct CObject {
    obj_ptr: ObjPtr,
    oid: u16,
    version: String,
    h: estuary_dm_handlers_t,
}

// SAFETY: the definition pointer and the handlers are only used by the event loop's
// thread — the thread the C caller runs estuary_event_loop_run() on; the C API forbids
// concurrent calls on one client, so the object is never used from two threads at once.
unsafe impl Send for CObject {}

fn kind_of_type(t: estuary_dm_type_t) -> Option<ValueKind> {
    Some(match t {
        ESTUARY_DM_TYPE_STRING => ValueKind::String,
        ESTUARY_DM_TYPE_INTEGER => ValueKind::Integer,
        ESTUARY_DM_TYPE_UNSIGNED => ValueKind::Unsigned,
        ESTUARY_DM_TYPE_FLOAT => ValueKind::Float,
        ESTUARY_DM_TYPE_BOOLEAN => ValueKind::Boolean,
        ESTUARY_DM_TYPE_OPAQUE => ValueKind::Opaque,
        ESTUARY_DM_TYPE_TIME => ValueKind::Time,
        ESTUARY_DM_TYPE_OBJLNK => ValueKind::Objlnk,
        ESTUARY_DM_TYPE_CORELNK => ValueKind::Corelnk,
        _ => return None,
    })
}

impl CObject {
    /// Checks and copies a definition.
    ///
    /// # Safety
    /// `def_ptr` must be NULL or point to a pointer that is NULL or points to a valid
    /// definition whose `version` is NULL or a NUL-terminated string.
    pub(crate) unsafe fn from_def(def_ptr: ObjPtr) -> Result<CObject, Refusal> {
        // SAFETY (both): forwarded from the caller.
        let inner = unsafe { arg_ref(def_ptr, "def_ptr") }?;
        let def = unsafe { arg_ref(*inner, "*def_ptr") }?;
        if def.oid <= oid::DEVICE || def.oid == u16::MAX {
            return Err(Refusal::invalid(format!(
                "Object ID {} is reserved (0 to 3 are built in, 65535 is invalid)",
                def.oid
            )));
        }
        if def.handlers.list_instances.is_none() {
            return Err(Refusal::null("(*def_ptr)->handlers.list_instances"));
        }
        if def.handlers.list_resources.is_none() {
            return Err(Refusal::null("(*def_ptr)->handlers.list_resources"));
        }
        // SAFETY: forwarded from the caller.
        let version = unsafe { opt_str_arg(def.version, "(*def_ptr)->version") }?
            .unwrap_or_else(|| "1.0".to_string());
        let valid_version = version.split_once('.').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        });
        if !valid_version {
            return Err(Refusal::invalid(format!(
                "(*def_ptr)->version \"{version}\" is not of the form MAJOR.MINOR"
            )));
        }
        Ok(CObject {
            obj_ptr: def_ptr,
            oid: def.oid,
            version,
            h: def.handlers,
        })
    }

    fn defs(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        let Some(list) = self.h.list_resources else {
            return Err(DmError::Internal);
        };
        let mut ctx = estuary_dm_resource_list_ctx_t {
            defs: Vec::new(),
            seen: Vec::new(),
        };
        // SAFETY: a handler of the registered definition, called as documented.
        let rc = with_live(&mut ctx, |p| unsafe { list(self.obj_ptr, iid, p) });
        handler_result(rc, "list_resources", self.oid)?;
        let mut defs = ctx.defs;
        defs.sort_by_key(|d| d.rid);
        Ok(defs)
    }

    fn def(&self, iid: u16, rid: u16) -> Result<ResourceDef, DmError> {
        self.defs(iid)?
            .into_iter()
            .find(|d| d.rid == rid)
            .ok_or(DmError::NotFound)
    }

    fn call_iid(
        &mut self,
        f: Option<unsafe extern "C" fn(ObjPtr, estuary_iid_t) -> c_int>,
        iid: u16,
        what: &str,
    ) -> Result<(), DmError> {
        let f = f.ok_or(DmError::MethodNotAllowed)?;
        // SAFETY: a handler of the registered definition, called as documented.
        handler_result(unsafe { f(self.obj_ptr, iid) }, what, self.oid)
    }

    fn call_hook(
        &mut self,
        f: Option<unsafe extern "C" fn(ObjPtr) -> c_int>,
        what: &str,
    ) -> Result<(), DmError> {
        match f {
            // SAFETY: a handler of the registered definition, called as documented.
            Some(f) => handler_result(unsafe { f(self.obj_ptr) }, what, self.oid),
            None => Ok(()),
        }
    }
}

impl Object for CObject {
    fn oid(&self) -> u16 {
        self.oid
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn instances(&self) -> Vec<u16> {
        let Some(list) = self.h.list_instances else {
            return Vec::new();
        };
        let mut ctx = estuary_dm_list_ctx_t { ids: Vec::new() };
        // SAFETY: a handler of the registered definition, called as documented.
        let rc = with_live(&mut ctx, |p| unsafe { list(self.obj_ptr, p) });
        if let Err(e) = handler_result(rc, "list_instances", self.oid) {
            ::log::warn!(target: "estuary::ffi", "/{}: list_instances failed ({e}); no instances listed", self.oid);
            return Vec::new();
        }
        let mut ids = ctx.ids;
        ids.sort_unstable();
        ids
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        self.defs(iid)
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        let def = self.def(iid, rid)?;
        if !def.ops.readable() {
            return Err(DmError::MethodNotAllowed);
        }
        let read = self.h.resource_read.ok_or(DmError::MethodNotAllowed)?;
        let mut ctx = estuary_output_ctx_t {
            def,
            single: None,
            instances: Vec::new(),
            pending_riid: None,
            refused: false,
        };
        // SAFETY: a handler of the registered definition, called as documented.
        let rc = with_live(&mut ctx, |p| unsafe { read(self.obj_ptr, iid, rid, p) });
        handler_result(rc, "resource_read", self.oid)?;
        let path = format!("/{}/{iid}/{rid}", self.oid);
        if ctx.refused {
            ::log::warn!(target: "estuary::ffi", "{path}: resource_read returned 0 after an estuary_ret_* call was refused; answering 5.00");
            return Err(DmError::Internal);
        }
        if def.multiple {
            if ctx.pending_riid.is_some() {
                ::log::warn!(target: "estuary::ffi", "{path}: resource_read gave a resource instance ID without a value; answering 5.00");
                return Err(DmError::Internal);
            }
            let mut vs = ctx.instances;
            vs.sort_by_key(|(ri, _)| *ri);
            return Ok(ResourceValue::Multiple(vs));
        }
        match ctx.single {
            Some(v) => Ok(ResourceValue::Single(v)),
            None => {
                ::log::warn!(target: "estuary::ffi", "{path}: resource_read returned 0 without a value; answering 5.00");
                Err(DmError::Internal)
            }
        }
    }

    fn write(&mut self, iid: u16, rid: u16, value: ResourceValue) -> Result<(), DmError> {
        let def = self.def(iid, rid)?;
        if !def.ops.writable() {
            return Err(DmError::MethodNotAllowed);
        }
        let value = match (def.multiple, value) {
            (false, v @ ResourceValue::Single(_)) | (true, v @ ResourceValue::Multiple(_)) => v,
            // A single value written to a multiple resource is a bad request, and so on.
            _ => return Err(DmError::BadRequest),
        };
        let write = self.h.resource_write.ok_or(DmError::MethodNotAllowed)?;
        let mut ctx = estuary_input_ctx_t {
            value,
            cursor: None,
            next: 0,
        };
        // SAFETY: a handler of the registered definition, called as documented.
        let rc = with_live(&mut ctx, |p| unsafe { write(self.obj_ptr, iid, rid, p) });
        handler_result(rc, "resource_write", self.oid)
    }

    fn execute(&mut self, iid: u16, rid: u16, args: &[u8]) -> Result<(), DmError> {
        let exec = self.h.resource_execute.ok_or(DmError::MethodNotAllowed)?;
        let mut buf = Vec::with_capacity(args.len() + 1);
        buf.extend_from_slice(args);
        buf.push(0);
        // SAFETY: a handler of the registered definition; `buf` outlives the call and
        // holds `args.len()` bytes plus a NUL.
        let rc = unsafe { exec(self.obj_ptr, iid, rid, buf.as_ptr().cast(), args.len()) };
        handler_result(rc, "resource_execute", self.oid)
    }

    fn create_instance(&mut self, iid: u16) -> Result<(), DmError> {
        if iid == ESTUARY_ID_INVALID || self.instances().contains(&iid) {
            return Err(DmError::BadRequest);
        }
        self.call_iid(self.h.instance_create, iid, "instance_create")
    }

    fn delete_instance(&mut self, iid: u16) -> Result<(), DmError> {
        if !self.instances().contains(&iid) {
            return Err(DmError::NotFound);
        }
        self.call_iid(self.h.instance_remove, iid, "instance_remove")
    }

    fn reset_instance(&mut self, iid: u16) -> Result<(), DmError> {
        match self.h.instance_reset {
            Some(_) => self.call_iid(self.h.instance_reset, iid, "instance_reset"),
            None => Ok(()),
        }
    }

    fn transaction_begin(&mut self) -> Result<(), DmError> {
        self.call_hook(self.h.transaction_begin, "transaction_begin")
    }

    fn transaction_validate(&mut self) -> Result<(), DmError> {
        self.call_hook(self.h.transaction_validate, "transaction_validate")
    }

    fn transaction_commit(&mut self) -> Result<(), DmError> {
        self.call_hook(self.h.transaction_commit, "transaction_commit")
    }

    fn transaction_rollback(&mut self) {
        if let Err(e) = self.call_hook(self.h.transaction_rollback, "transaction_rollback") {
            ::log::warn!(target: "estuary::ffi", "/{}: transaction_rollback failed: {e}", self.oid);
        }
    }
}

// ---- registration ---------------------------------------------------------------------

/// Registers a firmware object. `def_ptr` points to a pointer to the definition; it (and
/// what the firmware reaches through it) must stay valid until estuary_delete(), since
/// every handler receives it back as `obj_ptr`. Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT
/// (NULL `estuary`, `def_ptr`, `*def_ptr`, or a NULL list_instances / list_resources),
/// ESTUARY_ERR_INVALID_ARGUMENT (Object ID 0 to 3 or 65535, a version that is not
/// "MAJOR.MINOR" or not UTF-8), ESTUARY_ERR_ALREADY_EXISTS (an object with that ID is
/// registered), ESTUARY_ERR_NOT_SUPPORTED (the event loop has started).
#[no_mangle]
pub unsafe extern "C" fn estuary_register_object(
    estuary: *mut estuary_t,
    def_ptr: *const *const estuary_dm_object_def_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: valid or NULL pointers per the C caller.
        let obj = unsafe { CObject::from_def(def_ptr) }?;
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                if inner.driver.is_started() {
                    return Err(Refusal::new(
                        ESTUARY_ERR_NOT_SUPPORTED,
                        "objects cannot be registered once the event loop has started",
                    ));
                }
                let id = obj.oid;
                let dm = inner.driver.client_mut().data_model_mut();
                if dm.object(id).is_some() {
                    return Err(Refusal::new(
                        ESTUARY_ERR_ALREADY_EXISTS,
                        format!("object {id} is already registered"),
                    ));
                }
                dm.register(Box::new(obj)).map_err(|_| {
                    Refusal::new(
                        ESTUARY_ERR_ALREADY_EXISTS,
                        format!("object {id} is already registered"),
                    )
                })?;
                Ok(0)
            })
        }
    })
}

// ---- emit helpers ---------------------------------------------------------------------

/// From a list_instances handler: lists Instance ID `iid`. Returns 0, or:
/// ESTUARY_ERR_NULL_ARGUMENT / ESTUARY_ERR_INVALID_ARGUMENT (no live context, or `iid`
/// 65535), ESTUARY_ERR_ALREADY_EXISTS (emitted twice; the listing keeps one).
#[no_mangle]
pub unsafe extern "C" fn estuary_dm_emit(
    ctx: *mut estuary_dm_list_ctx_t,
    iid: estuary_iid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: checked against the live contexts before use.
        let ctx = unsafe { live_ctx(ctx) }?;
        if iid == ESTUARY_ID_INVALID {
            return Err(Refusal::invalid("Instance ID 65535 is reserved"));
        }
        if ctx.ids.contains(&iid) {
            return Err(Refusal::new(
                ESTUARY_ERR_ALREADY_EXISTS,
                format!("Instance ID {iid} was already emitted"),
            ));
        }
        ctx.ids.push(iid);
        Ok(0)
    })
}

/// From a list_resources handler: lists resource `rid` with its kind (ESTUARY_DM_RES_R,
/// _W, _RW, _RM, _WM, _RWM, _E), presence (ESTUARY_DM_RES_PRESENT / _ABSENT; absent
/// resources are left out of reads, writes and Discover) and data type (ESTUARY_DM_TYPE_*;
/// ESTUARY_DM_TYPE_NONE only for _E). Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT /
/// ESTUARY_ERR_INVALID_ARGUMENT (no live context, `rid` 65535, an unknown kind, presence
/// or type), ESTUARY_ERR_ALREADY_EXISTS (`rid` emitted twice; the first one counts).
#[no_mangle]
pub unsafe extern "C" fn estuary_dm_emit_res(
    ctx: *mut estuary_dm_resource_list_ctx_t,
    rid: estuary_rid_t,
    kind: estuary_dm_resource_kind_t,
    presence: estuary_dm_resource_presence_t,
    data_type: estuary_dm_type_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: checked against the live contexts before use.
        let ctx = unsafe { live_ctx(ctx) }?;
        if rid == u16::MAX {
            return Err(Refusal::invalid("Resource ID 65535 is reserved"));
        }
        let (ops, multiple) = match kind {
            ESTUARY_DM_RES_R => (Operations::Read, false),
            ESTUARY_DM_RES_W => (Operations::Write, false),
            ESTUARY_DM_RES_RW => (Operations::ReadWrite, false),
            ESTUARY_DM_RES_RM => (Operations::Read, true),
            ESTUARY_DM_RES_WM => (Operations::Write, true),
            ESTUARY_DM_RES_RWM => (Operations::ReadWrite, true),
            ESTUARY_DM_RES_E => (Operations::Execute, false),
            other => {
                return Err(Refusal::invalid(format!(
                    "kind {other} is not an ESTUARY_DM_RES_* kind"
                )))
            }
        };
        let present = match presence {
            ESTUARY_DM_RES_PRESENT => true,
            ESTUARY_DM_RES_ABSENT => false,
            other => {
                return Err(Refusal::invalid(format!(
                    "presence {other} is not ESTUARY_DM_RES_PRESENT or ESTUARY_DM_RES_ABSENT"
                )))
            }
        };
        let value_kind = if ops.executable() {
            if data_type != ESTUARY_DM_TYPE_NONE {
                return Err(Refusal::invalid(format!(
                    "resource {rid} is executable: its type must be ESTUARY_DM_TYPE_NONE"
                )));
            }
            ValueKind::None
        } else {
            kind_of_type(data_type).ok_or_else(|| {
                Refusal::invalid(format!(
                    "type {data_type} of resource {rid} is not an ESTUARY_DM_TYPE_* value with data"
                ))
            })?
        };
        if ctx.seen.contains(&rid) {
            return Err(Refusal::new(
                ESTUARY_ERR_ALREADY_EXISTS,
                format!("Resource ID {rid} was already emitted"),
            ));
        }
        ctx.seen.push(rid);
        if present {
            ctx.defs.push(ResourceDef {
                rid,
                kind: value_kind,
                ops,
                multiple,
            });
        }
        Ok(0)
    })
}

// ---- output: estuary_ret_* ------------------------------------------------------------

/// `v` as a value of kind `k`, where that loses nothing.
fn coerce(v: Value, k: ValueKind) -> Option<Value> {
    Some(match (v, k) {
        (v, k) if v.kind() == k => v,
        (Value::Integer(i), ValueKind::Time) => Value::Time(i),
        (Value::Integer(i), ValueKind::Unsigned) => Value::Unsigned(u64::try_from(i).ok()?),
        (Value::Integer(i), ValueKind::Float) => Value::Float(i as f64),
        (Value::Unsigned(u), ValueKind::Integer) => Value::Integer(i64::try_from(u).ok()?),
        (Value::Unsigned(u), ValueKind::Time) => Value::Time(i64::try_from(u).ok()?),
        (Value::Unsigned(u), ValueKind::Float) => Value::Float(u as f64),
        (Value::String(s), ValueKind::Corelnk) => Value::Corelnk(s),
        _ => return None,
    })
}

fn kind_name(k: ValueKind) -> &'static str {
    match k {
        ValueKind::String => "string",
        ValueKind::Integer => "integer",
        ValueKind::Unsigned => "unsigned integer",
        ValueKind::Float => "float",
        ValueKind::Boolean => "boolean",
        ValueKind::Opaque => "opaque",
        ValueKind::Time => "time",
        ValueKind::Objlnk => "object link",
        ValueKind::Corelnk => "CoRE link",
        ValueKind::None => "executable",
    }
}

/// Records a returned value; a refusal also marks the read as failed, so a handler that
/// ignores it still answers 5.00 rather than a wrong value.
fn ret(p: *mut estuary_output_ctx_t, v: Result<Value, Refusal>) -> Result<c_int, Refusal> {
    // SAFETY: checked against the live contexts before use.
    let ctx = unsafe { live_ctx(p) }?;
    let r = (|| {
        let v = v?;
        let want = ctx.def.kind;
        let got = v.kind();
        let v = coerce(v, want).ok_or_else(|| {
            Refusal::invalid(format!(
                "resource {} is declared {}, but a {} was returned",
                ctx.def.rid,
                kind_name(want),
                kind_name(got)
            ))
        })?;
        if ctx.def.multiple {
            let riid = ctx.pending_riid.take().ok_or_else(|| {
                Refusal::new(
                    ESTUARY_ERR_STATE,
                    format!(
                        "resource {} is multiple: call estuary_ret_instance() before each value",
                        ctx.def.rid
                    ),
                )
            })?;
            ctx.instances.push((riid, v));
        } else {
            if ctx.single.is_some() {
                return Err(Refusal::new(
                    ESTUARY_ERR_STATE,
                    format!("a value for resource {} was already returned", ctx.def.rid),
                ));
            }
            ctx.single = Some(v);
        }
        Ok(0)
    })();
    if r.is_err() {
        ctx.refused = true;
    }
    r
}

/// From a resource_read handler of a multiple resource: starts resource instance `riid`;
/// the next estuary_ret_* call gives its value. Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT /
/// ESTUARY_ERR_INVALID_ARGUMENT (no live context, `riid` 65535), ESTUARY_ERR_STATE (the
/// resource is single, or the previous instance has no value yet),
/// ESTUARY_ERR_ALREADY_EXISTS (`riid` returned twice).
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_instance(
    ctx: *mut estuary_output_ctx_t,
    riid: estuary_riid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: checked against the live contexts before use.
        let c = unsafe { live_ctx(ctx) }?;
        let r = (|| {
            if !c.def.multiple {
                return Err(Refusal::new(
                    ESTUARY_ERR_STATE,
                    format!(
                        "resource {} is single: it has no resource instances",
                        c.def.rid
                    ),
                ));
            }
            if riid == u16::MAX {
                return Err(Refusal::invalid("Resource Instance ID 65535 is reserved"));
            }
            if c.pending_riid.is_some() {
                return Err(Refusal::new(
                    ESTUARY_ERR_STATE,
                    "the previous resource instance has no value yet",
                ));
            }
            if c.instances.iter().any(|(ri, _)| *ri == riid) {
                return Err(Refusal::new(
                    ESTUARY_ERR_ALREADY_EXISTS,
                    format!("resource instance {riid} was already returned"),
                ));
            }
            c.pending_riid = Some(riid);
            Ok(0)
        })();
        if r.is_err() {
            c.refused = true;
        }
        r
    })
}

/// From a resource_read handler: returns a signed integer (also for time, unsigned and
/// float resources when the value fits). Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT /
/// ESTUARY_ERR_INVALID_ARGUMENT (no live context, a value the resource's type cannot
/// hold), ESTUARY_ERR_STATE (a second value for a single resource, or no
/// estuary_ret_instance() first for a multiple one). After a refusal the read answers 5.00.
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_i64(ctx: *mut estuary_output_ctx_t, value: i64) -> c_int {
    ffi_boundary!({ ret(ctx, Ok(Value::Integer(value))) })
}

/// As estuary_ret_i64(), for an unsigned integer.
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_u64(ctx: *mut estuary_output_ctx_t, value: u64) -> c_int {
    ffi_boundary!({ ret(ctx, Ok(Value::Unsigned(value))) })
}

/// As estuary_ret_i64(), for a float; NaN and infinities are refused
/// (ESTUARY_ERR_INVALID_ARGUMENT), since no content format can carry them.
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_double(ctx: *mut estuary_output_ctx_t, value: f64) -> c_int {
    ffi_boundary!({
        let v = if value.is_finite() {
            Ok(Value::Float(value))
        } else {
            Err(Refusal::invalid(format!("{value} is not a finite number")))
        };
        ret(ctx, v)
    })
}

/// As estuary_ret_i64(), for a boolean.
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_bool(ctx: *mut estuary_output_ctx_t, value: bool) -> c_int {
    ffi_boundary!({ ret(ctx, Ok(Value::Boolean(value))) })
}

/// As estuary_ret_i64(), for a NUL-terminated UTF-8 string (copied); also for CoRE link
/// resources. A NULL `value` is ESTUARY_ERR_NULL_ARGUMENT, invalid UTF-8
/// ESTUARY_ERR_INVALID_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_string(
    ctx: *mut estuary_output_ctx_t,
    value: *const c_char,
) -> c_int {
    ffi_boundary!({
        // SAFETY: NULL or a NUL-terminated string per the C caller.
        let v = unsafe { super::str_arg(value, "value") }.map(Value::String);
        ret(ctx, v)
    })
}

/// As estuary_ret_i64(), for `size` opaque bytes at `data` (copied; NULL with size 0 is
/// empty, NULL with a non-zero size ESTUARY_ERR_NULL_ARGUMENT).
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_bytes(
    ctx: *mut estuary_output_ctx_t,
    data: *const c_void,
    size: usize,
) -> c_int {
    ffi_boundary!({
        // SAFETY: NULL or `size` readable bytes per the C caller.
        let v = unsafe { bytes_arg(data.cast(), size, "data") }.map(Value::Opaque);
        ret(ctx, v)
    })
}

/// As estuary_ret_i64(), for an object link `oid:iid`.
#[no_mangle]
pub unsafe extern "C" fn estuary_ret_objlnk(
    ctx: *mut estuary_output_ctx_t,
    oid: estuary_oid_t,
    iid: estuary_iid_t,
) -> c_int {
    ffi_boundary!({ ret(ctx, Ok(Value::Objlnk(oid, iid))) })
}

// ---- input: estuary_get_* -------------------------------------------------------------

/// The value a get helper should read: the single value, or the current instance's.
fn current(ctx: &estuary_input_ctx_t) -> Result<&Value, Refusal> {
    match &ctx.value {
        ResourceValue::Single(v) => Ok(v),
        ResourceValue::Multiple(vs) => ctx
            .cursor
            .and_then(|i| vs.get(i))
            .map(|(_, v)| v)
            .ok_or_else(|| {
                Refusal::new(
                    ESTUARY_ERR_STATE,
                    "the resource is multiple: call estuary_get_instance() first",
                )
            }),
    }
}

fn mismatch(v: &Value, want: &str) -> Refusal {
    Refusal::new(
        ESTUARY_ERR_BAD_REQUEST,
        format!(
            "the written value ({}) is not a {want}",
            kind_name(v.kind())
        ),
    )
}

/// Big-endian bytes of 1, 2, 4 or 8 (what TLV carries when the type was unknown).
fn raw_int(b: &[u8]) -> Option<i64> {
    Some(match b.len() {
        1 => i64::from(i8::from_be_bytes([b[0]])),
        2 => i64::from(i16::from_be_bytes([b[0], b[1]])),
        4 => i64::from(i32::from_be_bytes(b.try_into().ok()?)),
        8 => i64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) | Value::Time(i) => Some(*i),
        Value::Unsigned(u) => i64::try_from(*u).ok(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Opaque(b) => raw_int(b),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Unsigned(u) => Some(*u),
        Value::Integer(i) | Value::Time(i) => u64::try_from(*i).ok(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Opaque(b) if b.len() == 8 => Some(u64::from_be_bytes(b.as_slice().try_into().ok()?)),
        Value::Opaque(b) => raw_int(b).and_then(|i| u64::try_from(i).ok()),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Float(f) => *f,
        Value::Integer(i) => *i as f64,
        Value::Unsigned(u) => *u as f64,
        Value::String(s) => s.trim().parse().ok()?,
        Value::Opaque(b) => match b.len() {
            4 => f64::from(f32::from_be_bytes(b.as_slice().try_into().ok()?)),
            8 => f64::from_be_bytes(b.as_slice().try_into().ok()?),
            _ => return None,
        },
        _ => return None,
    };
    f.is_finite().then_some(f)
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Boolean(b) => Some(*b),
        Value::String(s) => match s.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        },
        Value::Opaque(b) => match b.as_slice() {
            [1] => Some(true),
            [0] => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) | Value::Corelnk(s) => Some(s),
        Value::Opaque(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Opaque(b) => Some(b),
        Value::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_objlnk(v: &Value) -> Option<(u16, u16)> {
    match v {
        Value::Objlnk(o, i) => Some((*o, *i)),
        Value::String(s) => {
            let (o, i) = s.trim().split_once(':')?;
            Some((o.parse().ok()?, i.parse().ok()?))
        }
        Value::Opaque(b) if b.len() == 4 => Some((
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        )),
        _ => None,
    }
}

/// Reads the current value as `T` into `*out`.
fn get<T>(
    ctx: *mut estuary_input_ctx_t,
    out: *mut T,
    want: &str,
    conv: impl FnOnce(&Value) -> Option<T>,
) -> Result<c_int, Refusal> {
    // SAFETY: checked against the live contexts before use.
    let ctx = unsafe { live_ctx(ctx) }?;
    // SAFETY: NULL or a writable T per the C caller.
    let out = unsafe { arg_mut(out, "out") }?;
    let v = current(ctx)?;
    *out = conv(v).ok_or_else(|| mismatch(v, want))?;
    Ok(0)
}

/// From a resource_write handler of a multiple resource: selects the next written
/// resource instance and stores its ID in `*out_riid`; the estuary_get_* helpers then read
/// its value. Returns 0, ESTUARY_DM_END when every instance has been visited,
/// ESTUARY_ERR_NULL_ARGUMENT / ESTUARY_ERR_INVALID_ARGUMENT (no live context, NULL
/// `out_riid`), or ESTUARY_ERR_STATE (the resource is single).
#[no_mangle]
pub unsafe extern "C" fn estuary_get_instance(
    ctx: *mut estuary_input_ctx_t,
    out_riid: *mut estuary_riid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: checked against the live contexts before use.
        let c = unsafe { live_ctx(ctx) }?;
        // SAFETY: NULL or writable per the C caller.
        let out = unsafe { arg_mut(out_riid, "out_riid") }?;
        let ResourceValue::Multiple(vs) = &c.value else {
            return Err(Refusal::new(
                ESTUARY_ERR_STATE,
                "the resource is single: it has no resource instances",
            ));
        };
        match vs.get(c.next) {
            Some((riid, _)) => {
                *out = *riid;
                c.cursor = Some(c.next);
                c.next += 1;
                Ok(0)
            }
            None => {
                c.cursor = None;
                Ok(ESTUARY_DM_END)
            }
        }
    })
}

/// From a resource_write handler: the written value as a signed integer in `*out`.
/// Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT / ESTUARY_ERR_INVALID_ARGUMENT (no live
/// context, NULL `out`), ESTUARY_ERR_BAD_REQUEST (the value is not an integer in range —
/// return it from the handler to answer 4.00), ESTUARY_ERR_STATE (a multiple resource
/// without estuary_get_instance()). `*out` is written only on success.
#[no_mangle]
pub unsafe extern "C" fn estuary_get_i64(ctx: *mut estuary_input_ctx_t, out: *mut i64) -> c_int {
    ffi_boundary!({ get(ctx, out, "signed integer", as_i64) })
}

/// As estuary_get_i64(), for an unsigned integer.
#[no_mangle]
pub unsafe extern "C" fn estuary_get_u64(ctx: *mut estuary_input_ctx_t, out: *mut u64) -> c_int {
    ffi_boundary!({ get(ctx, out, "unsigned integer", as_u64) })
}

/// As estuary_get_i64(), for a (finite) float; integers are converted.
#[no_mangle]
pub unsafe extern "C" fn estuary_get_double(ctx: *mut estuary_input_ctx_t, out: *mut f64) -> c_int {
    ffi_boundary!({ get(ctx, out, "finite number", as_f64) })
}

/// As estuary_get_i64(), for a boolean.
#[no_mangle]
pub unsafe extern "C" fn estuary_get_bool(ctx: *mut estuary_input_ctx_t, out: *mut bool) -> c_int {
    ffi_boundary!({ get(ctx, out, "boolean", as_bool) })
}

/// From a resource_write handler: copies the written string and a terminating NUL into
/// `buf` (`buf_size` bytes). Returns 0, or: ESTUARY_ERR_NO_SPACE (`buf_size` is less than
/// the length + 1; nothing is written), ESTUARY_ERR_BAD_REQUEST (not a string, or it
/// contains a NUL), and the codes of estuary_get_i64().
#[no_mangle]
pub unsafe extern "C" fn estuary_get_string(
    ctx: *mut estuary_input_ctx_t,
    buf: *mut c_char,
    buf_size: usize,
) -> c_int {
    ffi_boundary!({
        // SAFETY: checked against the live contexts before use.
        let c = unsafe { live_ctx(ctx) }?;
        if buf.is_null() {
            return Err(Refusal::null("buf"));
        }
        let v = current(c)?;
        let s = as_str(v).ok_or_else(|| mismatch(v, "string"))?;
        if s.contains('\0') {
            return Err(Refusal::new(
                ESTUARY_ERR_BAD_REQUEST,
                "the written string contains a NUL character",
            ));
        }
        if s.len() >= buf_size {
            return Err(Refusal::new(
                ESTUARY_ERR_NO_SPACE,
                format!(
                    "the string needs {} bytes, buf_size is {buf_size}",
                    s.len() + 1
                ),
            ));
        }
        // SAFETY: `buf` has `buf_size` > s.len() writable bytes per the C caller.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
            *buf.add(s.len()) = 0;
        }
        Ok(0)
    })
}

/// From a resource_write handler: copies the written bytes into `buf` (`buf_size` bytes)
/// and their count into `*out_size`. Returns 0, or: ESTUARY_ERR_NO_SPACE (`buf_size` is
/// too small; nothing is written), ESTUARY_ERR_NULL_ARGUMENT (NULL `out_size`, or NULL
/// `buf` with a non-zero `buf_size`), ESTUARY_ERR_BAD_REQUEST (not opaque or string), and
/// the codes of estuary_get_i64().
#[no_mangle]
pub unsafe extern "C" fn estuary_get_bytes(
    ctx: *mut estuary_input_ctx_t,
    buf: *mut c_void,
    buf_size: usize,
    out_size: *mut usize,
) -> c_int {
    ffi_boundary!({
        // SAFETY: checked against the live contexts before use.
        let c = unsafe { live_ctx(ctx) }?;
        // SAFETY: NULL or writable per the C caller.
        let out_size = unsafe { arg_mut(out_size, "out_size") }?;
        if buf.is_null() && buf_size != 0 {
            return Err(Refusal::new(
                ESTUARY_ERR_NULL_ARGUMENT,
                format!("buf is NULL but buf_size is {buf_size}"),
            ));
        }
        let v = current(c)?;
        let b = as_bytes(v).ok_or_else(|| mismatch(v, "byte string"))?;
        if b.len() > buf_size {
            return Err(Refusal::new(
                ESTUARY_ERR_NO_SPACE,
                format!("the value has {} bytes, buf_size is {buf_size}", b.len()),
            ));
        }
        if !b.is_empty() {
            // SAFETY: `buf` is non-NULL (b.len() > 0 implies buf_size > 0) with at least
            // b.len() writable bytes per the C caller.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), buf.cast::<u8>(), b.len()) };
        }
        *out_size = b.len();
        Ok(0)
    })
}

/// From a resource_write handler: the written object link in `*out_oid` and `*out_iid`.
/// Returns as estuary_get_i64().
#[no_mangle]
pub unsafe extern "C" fn estuary_get_objlnk(
    ctx: *mut estuary_input_ctx_t,
    out_oid: *mut estuary_oid_t,
    out_iid: *mut estuary_iid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY (both): NULL or writable per the C caller.
        let out_oid = unsafe { arg_mut(out_oid, "out_oid") }?;
        let out_iid = unsafe { arg_mut(out_iid, "out_iid") }?;
        let mut link = (0u16, 0u16);
        get(ctx, &mut link, "object link", as_objlnk)?;
        *out_oid = link.0;
        *out_iid = link.1;
        Ok(0)
    })
}

// ---- notifications --------------------------------------------------------------------

/// Announces that resource /`oid`/`iid`/`rid` changed (or the whole instance, with `rid`
/// ESTUARY_ID_INVALID), so servers observing it get a notification as their attributes
/// (pmin, pmax, gt, lt, st) allow. Call it from the thread that runs the event loop, while
/// the loop is not running (from inside a handler it returns ESTUARY_ERR_BUSY: interrupt
/// the loop and call it afterwards). Read handlers may run inside this call to get the
/// new value. Before the event loop has started there is nobody to notify and it returns
/// 0. Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT, ESTUARY_ERR_INVALID_ARGUMENT (`iid` 65535,
/// or no object `oid`), ESTUARY_ERR_BUSY.
#[no_mangle]
pub unsafe extern "C" fn estuary_notify_changed(
    estuary: *mut estuary_t,
    oid: estuary_oid_t,
    iid: estuary_iid_t,
    rid: estuary_rid_t,
) -> c_int {
    ffi_boundary!({
        if iid == ESTUARY_ID_INVALID {
            return Err(Refusal::invalid("iid 65535 does not name an instance"));
        }
        let path = if rid == ESTUARY_ID_INVALID {
            Path::instance(oid, iid)
        } else {
            Path::resource(oid, iid, rid)
        };
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                if inner.driver.client().data_model().object(oid).is_none() {
                    return Err(Refusal::invalid(format!("there is no object {oid}")));
                }
                if inner.driver.is_started() {
                    inner.driver.notify_changed(&path);
                }
                Ok(0)
            })
        }
    })
}

#[cfg(test)]
#[path = "dm_tests.rs"]
mod tests;
