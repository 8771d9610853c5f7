//! The proxy-wasm host: ABI 0.2.1 (and 0.2.0) filters on wasmtime.
//!
//! One [`WasmPlugin`] per configured plugin holds a compiled module and a few VMs (one
//! wasmtime store and instance each, as many as the LB has worker threads); HTTP contexts of
//! concurrent requests are spread over them and interleave inside a VM as they do in Envoy.
//! Every callback runs under the plugin's `call_timeout` (wasmtime epoch interruption) and
//! `max_memory_mib` (store limits). A VM that traps, runs out of time or memory is dropped and
//! rebuilt (`_start`, `proxy_on_vm_start`, `proxy_on_configure`) on its next use; the request
//! whose callback failed gets the error, contexts of other requests that lived in the dropped
//! VM are created again in the new one.
//!
//! Lifecycle as proxy-wasm-cpp-host runs it (`src/context.cc`): `_initialize` or `_start`,
//! `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`; per request
//! `proxy_on_context_create(ctx, root)`, the HTTP callbacks, `proxy_on_done`, `proxy_on_log`,
//! `proxy_on_delete`. Host calls this host does not offer (HTTP and gRPC callouts, shared
//! queues, foreign functions, any import it does not know) return `UNIMPLEMENTED` (12), WASI
//! ones `NOTSUP` (58); none traps.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::{
    Caller, Engine, ExternType, Instance, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc, Val, ValType,
};

use super::abi::{self, buffer, errno, map, status, Pairs};
use super::{LocalResponse, StreamInfo, Usage, UsageTracker};

/// How often the epoch advances: the resolution of `call_timeout`.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The root context's id in every VM; HTTP contexts count up from the next one.
const ROOT_ID: i32 = 1;

/// Limits of `proxy_set_shared_data`, per VM id: a value, and all values together.
const MAX_SHARED_VALUE: usize = 1 << 20;
const MAX_SHARED_TOTAL: usize = 16 << 20;

/// The largest body or header map handed to or taken from a filter at once.
const MAX_TRANSFER: usize = 256 << 20;

/// The engine every plugin compiles for (epoch interruption on), and the thread that advances
/// its epoch.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        cfg.max_wasm_stack(512 * 1024);
        let engine = match Engine::new(&cfg) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "wasmtime engine with epochs failed; plugins run without time limits");
                Engine::default()
            }
        };
        let ticking = engine.clone();
        let spawned = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the wasm epoch thread");
        }
        engine
    })
}

/// `proxy_set_shared_data` values: VM id → key → (value, CAS). They outlive plugin reloads,
/// as Envoy's do.
type SharedData = HashMap<String, HashMap<Vec<u8>, (Vec<u8>, u32)>>;
static SHARED_DATA: LazyLock<Mutex<SharedData>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// One metric a plugin defined (`proxy_define_metric`); ids are 1-based indexes.
#[derive(Debug, Clone)]
pub struct MetricValue {
    pub name: String,
    /// `abi::metric::{COUNTER, GAUGE, HISTOGRAM}`.
    pub kind: i32,
    /// The counter's or gauge's value.
    pub value: i64,
    /// A histogram's recorded values: their sum and count.
    pub sum: i64,
    pub count: u64,
}

/// What every VM of one plugin shares.
pub struct PluginShared {
    pub name: String,
    pub vm_id: String,
    configuration: Bytes,
    metrics: Mutex<Vec<MetricValue>>,
    started: Instant,
}

impl PluginShared {
    /// The plugin's metrics, in definition order.
    pub fn metrics(&self) -> Vec<MetricValue> {
        self.metrics.lock().clone()
    }
}

/// The per-request data the callbacks read and change; moved into the VM's store for each
/// callback and back after it.
#[derive(Default)]
pub struct HttpData {
    pub request_headers: Pairs,
    pub request_headers_changed: bool,
    pub request_body: Bytes,
    pub request_body_changed: bool,
    pub response_headers: Pairs,
    pub response_headers_changed: bool,
    pub response_body: Bytes,
    pub info: StreamInfo,
    /// Values set with `proxy_set_property`, readable by later filters of the request.
    pub filter_state: HashMap<String, Vec<u8>>,
    /// `proxy_send_local_response` (or `proxy_close_stream`) during the last callback.
    pub local: Option<LocalResponse>,
    /// The response body as it passed, to read its `usage` from once it has ended.
    pub usage_tracker: UsageTracker,
    pub response_complete: bool,
    pub(super) usage: Option<Option<Usage>>,
}

impl HttpData {
    /// The answer's token counts, once the response has ended (read on first use).
    pub fn usage(&mut self) -> Option<Usage> {
        if !self.response_complete {
            return None;
        }
        *self.usage.get_or_insert_with(|| self.usage_tracker.usage())
    }
}

/// The store's data: limits, the plugin, the guest's memory and allocator, and the request
/// the current callback is for.
pub struct HostState {
    limits: StoreLimits,
    plugin: Arc<PluginShared>,
    memory: Option<Memory>,
    alloc: Option<TypedFunc<i32, i32>>,
    /// Boxed: it moves in and out of the store for every callback.
    http: Box<HttpData>,
    tick_period_ms: u32,
}

/// The callbacks a module exports (each optional).
#[derive(Clone)]
struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    tick: Option<TypedFunc<i32, ()>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

/// One instance of the module.
struct Vm {
    store: Store<HostState>,
    cb: Callbacks,
    next_ctx: i32,
}

/// A VM slot: the VM (`None` after a failure, until its next use rebuilds it) and how many
/// times it was built.
struct Slot {
    vm: Option<Vm>,
    generation: u64,
    next_tick: Option<Instant>,
}

/// Which HTTP callbacks the module exports: the chain skips the others, and the response
/// keeps its `Content-Length` unless a body callback may change it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exports {
    pub request_headers: bool,
    pub request_body: bool,
    pub response_headers: bool,
    pub response_body: bool,
}

/// A request's context in one plugin: its VM, that VM's generation, and its context id
/// (0 until created).
#[derive(Debug, Clone, Copy, Default)]
pub struct Handle {
    vm: usize,
    generation: u64,
    ctx: i32,
}

/// Why a callback failed: the request fails (or passes, with `fail_open`).
#[derive(Debug, Clone)]
pub struct PluginFailure {
    pub plugin: String,
    pub reason: String,
}

/// A loaded proxy-wasm plugin.
pub struct WasmPlugin {
    pub config: config::PluginConfig,
    pub shared: Arc<PluginShared>,
    pub exports: Exports,
    pre: InstancePre<HostState>,
    slots: Vec<Mutex<Slot>>,
    next_vm: AtomicUsize,
    /// Callbacks that failed (traps, timeouts, memory).
    pub failures: AtomicU64,
    /// The module file's size and modification time when loaded: a reload with the same
    /// configuration and file keeps this plugin (its VMs, metrics).
    file_stamp: Option<(u64, SystemTime)>,
}

fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl WasmPlugin {
    /// Compile and start a plugin: `vms` instances, each configured. Errors name what is
    /// wrong (unreadable file, not a proxy-wasm 0.2.x module, an export of the wrong type,
    /// `proxy_on_configure` refusing the configuration, a trap while starting).
    pub fn load(cfg: &config::PluginConfig, vms: usize) -> Result<Arc<WasmPlugin>, String> {
        let engine = engine();
        let bytes = std::fs::read(&cfg.path)
            .map_err(|e| format!("cannot read {}: {e}", cfg.path.display()))?;
        let is_text = cfg.path.extension().is_some_and(|x| x == "wat");
        if !is_text && !bytes.starts_with(b"\0asm") {
            return Err(format!(
                "{} is not a WebAssembly binary (it does not start with \\0asm); WebAssembly text goes in a .wat file",
                cfg.path.display()
            ));
        }
        let module = Module::new(engine, &bytes)
            .map_err(|e| format!("cannot compile {}: {e:#}", cfg.path.display()))?;
        let abi_ok = module.exports().any(|e| {
            matches!(
                e.name(),
                "proxy_abi_version_0_2_1" | "proxy_abi_version_0_2_0"
            )
        });
        if !abi_ok {
            return Err(format!(
                "{} is not a proxy-wasm filter of ABI 0.2.1 or 0.2.0 (it exports no proxy_abi_version_0_2_1)",
                cfg.path.display()
            ));
        }
        let has = |n: &str| module.exports().any(|e| e.name() == n);
        let exports = Exports {
            request_headers: has("proxy_on_request_headers"),
            request_body: has("proxy_on_request_body"),
            response_headers: has("proxy_on_response_headers"),
            response_body: has("proxy_on_response_body"),
        };
        let linker = linker(engine, &module).map_err(|e| format!("cannot link: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot link {}: {e:#}", cfg.path.display()))?;
        let shared = Arc::new(PluginShared {
            name: cfg.name.clone(),
            vm_id: cfg.vm_id.clone(),
            configuration: Bytes::from(cfg.configuration.clone().into_bytes()),
            metrics: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let mut plugin = WasmPlugin {
            config: cfg.clone(),
            shared,
            exports,
            pre,
            slots: Vec::new(),
            next_vm: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
            file_stamp: file_stamp(&cfg.path),
        };
        for _ in 0..vms.max(1) {
            let vm = plugin.new_vm()?;
            plugin.slots.push(Mutex::new(Slot {
                vm: Some(vm),
                generation: 0,
                next_tick: None,
            }));
        }
        let plugin = Arc::new(plugin);
        spawn_ticker(Arc::downgrade(&plugin));
        Ok(plugin)
    }

    /// Whether a reload with `cfg` can keep this plugin as it is.
    pub fn same_as(&self, cfg: &config::PluginConfig) -> bool {
        self.config == *cfg && self.file_stamp.is_some() && self.file_stamp == file_stamp(&cfg.path)
    }

    /// Instances currently built.
    pub fn vms(&self) -> usize {
        self.slots.len()
    }

    fn deadline_ticks(&self) -> u64 {
        (self.config.call_timeout.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 1
    }

    /// Build and start one VM.
    fn new_vm(&self) -> Result<Vm, String> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.max_memory_mib as usize * 1024 * 1024)
            .memories(1)
            .tables(4)
            .table_elements(1 << 20)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            engine(),
            HostState {
                limits,
                plugin: self.shared.clone(),
                memory: None,
                alloc: None,
                http: Box::default(),
                tick_period_ms: 0,
            },
        );
        store.limiter(|s| &mut s.limits);
        // starting may do more work than a callback: ten call timeouts
        store.set_epoch_deadline(self.deadline_ticks() * 10);
        let fail = |what: &str, e: wasmtime::Error| format!("{what}: {}", describe(&e, self));
        let instance: Instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail("instantiating", e))?;
        let memory = instance.get_memory(&mut store, "memory");
        if memory.is_none() {
            return Err("the module exports no memory named `memory`".into());
        }
        store.data_mut().memory = memory;
        let alloc = typed::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")?
            .or(typed::<i32, i32>(&instance, &mut store, "malloc")?);
        if alloc.is_none() {
            return Err(
                "the module exports no allocator (proxy_on_memory_allocate or malloc)".into(),
            );
        }
        store.data_mut().alloc = alloc;
        if let Some(init) =
            typed::<(), ()>(&instance, &mut store, "_initialize")?
                .or(typed::<(), ()>(&instance, &mut store, "_start")?)
        {
            init.call(&mut store, ())
                .map_err(|e| fail("_initialize/_start", e))?;
        }
        let cb = Callbacks {
            context_create: typed(&instance, &mut store, "proxy_on_context_create")?,
            vm_start: typed(&instance, &mut store, "proxy_on_vm_start")?,
            configure: typed(&instance, &mut store, "proxy_on_configure")?,
            tick: typed(&instance, &mut store, "proxy_on_tick")?,
            request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            request_body: typed(&instance, &mut store, "proxy_on_request_body")?,
            response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            response_body: typed(&instance, &mut store, "proxy_on_response_body")?,
            done: typed(&instance, &mut store, "proxy_on_done")?,
            log: typed(&instance, &mut store, "proxy_on_log")?,
            delete: typed(&instance, &mut store, "proxy_on_delete")?,
        };
        if let Some(f) = &cb.context_create {
            f.call(&mut store, (ROOT_ID, 0))
                .map_err(|e| fail("proxy_on_context_create (root)", e))?;
        }
        if let Some(f) = &cb.vm_start {
            let ok = f
                .call(&mut store, (ROOT_ID, 0))
                .map_err(|e| fail("proxy_on_vm_start", e))?;
            if ok == 0 {
                return Err("proxy_on_vm_start returned false".into());
            }
        }
        if let Some(f) = &cb.configure {
            let n = self.shared.configuration.len() as i32;
            let ok = f
                .call(&mut store, (ROOT_ID, n))
                .map_err(|e| fail("proxy_on_configure", e))?;
            if ok == 0 {
                return Err(format!(
                    "proxy_on_configure refused the configuration {:?}",
                    self.config.configuration
                ));
            }
        }
        Ok(Vm {
            store,
            cb,
            next_ctx: ROOT_ID + 1,
        })
    }

    /// A new request's handle: its VM, chosen round-robin; the context is created on the
    /// first callback.
    pub fn handle(&self) -> Handle {
        Handle {
            vm: self.next_vm.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1),
            generation: 0,
            ctx: 0,
        }
    }

    /// Run one callback for the request of `h`, with `data` moved into the VM for its length.
    fn call<R>(
        &self,
        h: &mut Handle,
        data: &mut Box<HttpData>,
        what: &str,
        f: impl FnOnce(&mut Store<HostState>, &Callbacks, i32) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let Some(slot) = self.slots.get(h.vm) else {
            return Err(self.failure(what, "no VM".into()));
        };
        let mut slot = slot.lock();
        if slot.vm.is_none() {
            match self.new_vm() {
                Ok(vm) => {
                    slot.vm = Some(vm);
                    tracing::info!(plugin = %self.config.name, "plugin VM rebuilt");
                }
                Err(e) => return Err(self.failure(what, format!("restarting its VM: {e}"))),
            }
        }
        let generation = slot.generation;
        let ticks = self.deadline_ticks();
        let Some(vm) = slot.vm.as_mut() else {
            return Err(self.failure(what, "no VM".into()));
        };
        let mut result = Ok(None);
        if h.ctx == 0 || h.generation != generation {
            // first use, or the VM this request's context lived in was rebuilt
            let ctx = vm.next_ctx;
            vm.next_ctx = vm.next_ctx.checked_add(1).unwrap_or(ROOT_ID + 1);
            h.ctx = ctx;
            h.generation = generation;
            if let Some(cc) = &vm.cb.context_create {
                vm.store.set_epoch_deadline(ticks);
                if let Err(e) = cc.call(&mut vm.store, (ctx, ROOT_ID)) {
                    result = Err(e);
                }
            }
        }
        if result.is_ok() {
            std::mem::swap(&mut vm.store.data_mut().http, data);
            vm.store.set_epoch_deadline(ticks);
            let Vm { store, cb, .. } = vm;
            result = f(store, cb, h.ctx).map(Some);
            std::mem::swap(&mut vm.store.data_mut().http, data);
        }
        let period = vm.store.data().tick_period_ms;
        match result {
            Ok(r) => {
                if period == 0 {
                    slot.next_tick = None;
                } else if slot.next_tick.is_none() {
                    slot.next_tick = Some(Instant::now() + Duration::from_millis(period.into()));
                }
                r.ok_or_else(|| self.failure(what, "no result".into()))
            }
            Err(e) => {
                let reason = describe(&e, self);
                slot.vm = None;
                slot.generation += 1;
                slot.next_tick = None;
                Err(self.failure(what, reason))
            }
        }
    }

    fn failure(&self, what: &str, reason: String) -> PluginFailure {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(plugin = %self.config.name, callback = what, %reason, "plugin failed");
        PluginFailure {
            plugin: self.config.name.clone(),
            reason: format!("{what}: {reason}"),
        }
    }

    /// `proxy_on_request_headers`: `true` to continue, `false` when the filter paused.
    pub fn on_request_headers(
        &self,
        h: &mut Handle,
        data: &mut Box<HttpData>,
    ) -> Result<bool, PluginFailure> {
        let n = data.request_headers.len() as i32;
        self.action(h, data, "proxy_on_request_headers", (n, 0), |cb| {
            cb.request_headers.as_ref()
        })
    }

    /// `proxy_on_request_body` with the whole body (`end_of_stream` true).
    pub fn on_request_body(
        &self,
        h: &mut Handle,
        data: &mut Box<HttpData>,
    ) -> Result<bool, PluginFailure> {
        let n = data.request_body.len() as i32;
        self.action(h, data, "proxy_on_request_body", (n, 1), |cb| {
            cb.request_body.as_ref()
        })
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(
        &self,
        h: &mut Handle,
        data: &mut Box<HttpData>,
        end: bool,
    ) -> Result<bool, PluginFailure> {
        let n = data.response_headers.len() as i32;
        self.action(
            h,
            data,
            "proxy_on_response_headers",
            (n, i32::from(end)),
            |cb| cb.response_headers.as_ref(),
        )
    }

    /// `proxy_on_response_body` with `data.response_body` (all that this filter holds).
    pub fn on_response_body(
        &self,
        h: &mut Handle,
        data: &mut Box<HttpData>,
        end: bool,
    ) -> Result<bool, PluginFailure> {
        let n = data.response_body.len() as i32;
        self.action(
            h,
            data,
            "proxy_on_response_body",
            (n, i32::from(end)),
            |cb| cb.response_body.as_ref(),
        )
    }

    fn action(
        &self,
        h: &mut Handle,
        data: &mut Box<HttpData>,
        what: &str,
        (a, b): (i32, i32),
        pick: impl FnOnce(&Callbacks) -> Option<&TypedFunc<(i32, i32, i32), i32>>,
    ) -> Result<bool, PluginFailure> {
        self.call(h, data, what, |store, cb, ctx| match pick(cb) {
            Some(f) => Ok(f.call(store, (ctx, a, b))? == abi::ACTION_CONTINUE),
            None => Ok(true),
        })
    }

    /// The end of a request: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`. Nothing is
    /// called for a request whose context was never created.
    pub fn on_log(&self, h: &mut Handle, data: &mut Box<HttpData>) -> Result<(), PluginFailure> {
        if h.ctx == 0 {
            return Ok(());
        }
        let current = self
            .slots
            .get(h.vm)
            .is_some_and(|s| s.lock().generation == h.generation);
        if !current {
            // its VM was rebuilt: the context is gone with it
            return Ok(());
        }
        self.call(h, data, "proxy_on_log", |store, cb, ctx| {
            if let Some(f) = &cb.done {
                f.call(&mut *store, ctx)?;
            }
            if let Some(f) = &cb.log {
                f.call(&mut *store, ctx)?;
            }
            if let Some(f) = &cb.delete {
                f.call(&mut *store, ctx)?;
            }
            Ok(())
        })
    }

    /// `proxy_on_tick` for every VM whose period is due; the time of the next one due.
    fn tick(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            let due = slot.lock().next_tick;
            let Some(due) = due else { continue };
            if due <= now {
                let mut h = Handle {
                    vm: i,
                    generation: 0,
                    ctx: ROOT_ID,
                };
                h.generation = slot.lock().generation;
                let mut data = Box::<HttpData>::default();
                let _ = self.call(&mut h, &mut data, "proxy_on_tick", |store, cb, _| {
                    if let Some(f) = &cb.tick {
                        f.call(store, ROOT_ID)?;
                    }
                    Ok(())
                });
                let mut s = slot.lock();
                let period = s.vm.as_ref().map_or(0, |vm| vm.store.data().tick_period_ms);
                s.next_tick = (period > 0).then(|| now + Duration::from_millis(period.into()));
            }
            if let Some(t) = slot.lock().next_tick {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }
}

/// The thread that runs a plugin's `proxy_on_tick`s; it ends when the plugin is dropped (a
/// reload replaced it and its last request finished).
fn spawn_ticker(plugin: Weak<WasmPlugin>) {
    let spawned = std::thread::Builder::new()
        .name("wasm-tick".into())
        .spawn(move || loop {
            let next = match plugin.upgrade() {
                Some(p) => p.tick(),
                None => return,
            };
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(100))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            std::thread::sleep(wait);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start a plugin's tick thread");
    }
}

/// A typed export, `None` when absent; an error when it has another signature.
fn typed<P, R>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, String>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| format!("its export {name} has the wrong signature: {e}")),
    }
}

/// What went wrong in a call, for logs and the client's error.
fn describe(e: &wasmtime::Error, plugin: &WasmPlugin) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "ran past its call_timeout of {} ms",
            plugin.config.call_timeout.as_millis()
        ),
        Some(Trap::StackOverflow) => "overflowed its stack".into(),
        Some(t) => {
            let text = format!("{e:#}");
            if text.contains("grow") && text.contains("memory") {
                format!(
                    "exceeded its memory limit of {} MiB",
                    plugin.config.max_memory_mib
                )
            } else {
                format!("trapped: {t}")
            }
        }
        None => {
            let text = format!("{e:#}");
            if text.contains("grow") && text.contains("memory") || text.contains("memory minimum") {
                format!(
                    "exceeded its memory limit of {} MiB",
                    plugin.config.max_memory_mib
                )
            } else {
                text
            }
        }
    }
}

type R = wasmtime::Result<i32>;
type C<'a> = Caller<'a, HostState>;

fn mem_get(caller: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
    let mem = caller.data().memory.ok_or(status::INTERNAL_FAILURE)?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    let end = p.checked_add(l).ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.data(&*caller)
        .get(p..end)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

fn mem_put(caller: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let mem = caller.data().memory.ok_or(status::INTERNAL_FAILURE)?;
    let p = ptr as u32 as usize;
    let end = p
        .checked_add(bytes.len())
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.data_mut(&mut *caller)
        .get_mut(p..end)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .copy_from_slice(bytes);
    Ok(())
}

fn put_u32(caller: &mut C<'_>, ptr: i32, v: u32) -> Result<(), i32> {
    mem_put(caller, ptr, &v.to_le_bytes())
}

fn put_u64(caller: &mut C<'_>, ptr: i32, v: u64) -> Result<(), i32> {
    mem_put(caller, ptr, &v.to_le_bytes())
}

fn get_str(caller: &mut C<'_>, ptr: i32, len: i32) -> Result<String, i32> {
    let b = mem_get(caller, ptr, len)?;
    String::from_utf8(b).map_err(|_| status::BAD_ARGUMENT)
}

/// Hand `bytes` to the guest: memory from its allocator, the pointer and length written to
/// `ret_ptr` and `ret_len`. Empty data is pointer 0 and length 0, without an allocation (as
/// Envoy does; SDKs read a null pointer as "no data").
fn give(caller: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> R {
    if bytes.is_empty() {
        return Ok(
            match put_u32(caller, ret_ptr, 0).and(put_u32(caller, ret_len, 0)) {
                Ok(()) => status::OK,
                Err(s) => s,
            },
        );
    }
    if bytes.len() > MAX_TRANSFER {
        return Ok(status::BAD_ARGUMENT);
    }
    let Some(alloc) = caller.data().alloc.clone() else {
        return Ok(status::INTERNAL_FAILURE);
    };
    let p = alloc.call(&mut *caller, bytes.len() as i32)?;
    if p == 0 {
        return Ok(status::INTERNAL_FAILURE);
    }
    let written = mem_put(caller, p, bytes)
        .and(put_u32(caller, ret_ptr, p as u32))
        .and(put_u32(caller, ret_len, bytes.len() as u32));
    Ok(match written {
        Ok(()) => status::OK,
        Err(s) => s,
    })
}

/// `Ok(status)` from a `Result<i32, i32>` of status codes.
fn st(r: Result<i32, i32>) -> R {
    Ok(r.unwrap_or_else(|s| s))
}

fn header_map(http: &mut HttpData, m: i32) -> Option<(&mut Pairs, &mut bool)> {
    match m {
        map::HTTP_REQUEST_HEADERS => {
            Some((&mut http.request_headers, &mut http.request_headers_changed))
        }
        map::HTTP_RESPONSE_HEADERS => Some((
            &mut http.response_headers,
            &mut http.response_headers_changed,
        )),
        _ => None,
    }
}

fn body_buffer(http: &mut HttpData, t: i32) -> Option<(&mut Bytes, Option<&mut bool>)> {
    match t {
        buffer::HTTP_REQUEST_BODY => {
            Some((&mut http.request_body, Some(&mut http.request_body_changed)))
        }
        buffer::HTTP_RESPONSE_BODY => Some((&mut http.response_body, None)),
        _ => None,
    }
}

fn log_line(plugin: &str, level: i32, msg: &str) {
    match level {
        0 => tracing::trace!(plugin, "{msg}"),
        1 => tracing::debug!(plugin, "{msg}"),
        2 => tracing::info!(plugin, "{msg}"),
        3 => tracing::warn!(plugin, "{msg}"),
        _ => tracing::error!(plugin, "{msg}"),
    }
}

/// The linker: every host function this host implements, then a stand-in for each other
/// function the module imports (returning UNIMPLEMENTED, or NOTSUP under WASI).
fn linker(engine: &Engine, module: &Module) -> wasmtime::Result<Linker<HostState>> {
    let mut l: Linker<HostState> = Linker::new(engine);
    let mut defined: HashSet<(String, String)> = HashSet::new();
    macro_rules! def {
        ($module:expr, $name:expr, $f:expr) => {{
            l.func_wrap($module, $name, $f)?;
            defined.insert(($module.to_string(), $name.to_string()));
        }};
    }

    // logging, time, timers
    def!("env", "proxy_log", |mut c: C<'_>,
                              level: i32,
                              p: i32,
                              n: i32|
     -> R {
        let msg = match mem_get(&mut c, p, n) {
            Ok(m) => m,
            Err(s) => return Ok(s),
        };
        log_line(&c.data().plugin.name, level, &String::from_utf8_lossy(&msg));
        Ok(status::OK)
    });
    def!("env", "proxy_get_log_level", |mut c: C<'_>,
                                        ret: i32|
     -> R {
        use tracing::level_filters::LevelFilter;
        let level = match LevelFilter::current() {
            LevelFilter::TRACE => 0,
            LevelFilter::DEBUG => 1,
            LevelFilter::INFO => 2,
            LevelFilter::WARN => 3,
            LevelFilter::ERROR => 4,
            _ => abi::LOG_CRITICAL,
        };
        st(put_u32(&mut c, ret, level as u32).map(|()| status::OK))
    });
    def!("env", "proxy_get_current_time_nanoseconds", |mut c: C<
        '_,
    >,
                                                       ret: i32|
     -> R {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        st(put_u64(&mut c, ret, ns).map(|()| status::OK))
    });
    def!("env", "proxy_set_tick_period_milliseconds", |mut c: C<
        '_,
    >,
                                                       ms: i32|
     -> R {
        c.data_mut().tick_period_ms = ms as u32;
        Ok(status::OK)
    });

    // buffers
    def!("env", "proxy_get_buffer_bytes", |mut c: C<'_>,
                                           t: i32,
                                           start: i32,
                                           max: i32,
                                           rp: i32,
                                           rl: i32|
     -> R {
        let data: Bytes = match t {
            buffer::PLUGIN_CONFIGURATION => c.data().plugin.configuration.clone(),
            buffer::VM_CONFIGURATION => Bytes::new(),
            _ => match body_buffer(&mut c.data_mut().http, t) {
                Some((b, _)) => b.clone(),
                None => return Ok(status::NOT_FOUND),
            },
        };
        let start = (start as u32 as usize).min(data.len());
        let end = start.saturating_add(max as u32 as usize).min(data.len());
        give(&mut c, &data[start..end], rp, rl)
    });
    def!("env", "proxy_get_buffer_status", |mut c: C<'_>,
                                            t: i32,
                                            rl: i32,
                                            rf: i32|
     -> R {
        let len = match t {
            buffer::PLUGIN_CONFIGURATION => c.data().plugin.configuration.len(),
            buffer::VM_CONFIGURATION => 0,
            _ => match body_buffer(&mut c.data_mut().http, t) {
                Some((b, _)) => b.len(),
                None => return Ok(status::NOT_FOUND),
            },
        };
        st(put_u32(&mut c, rl, len as u32)
            .and(put_u32(&mut c, rf, 0))
            .map(|()| status::OK))
    });
    def!("env", "proxy_set_buffer_bytes", |mut c: C<'_>,
                                           t: i32,
                                           start: i32,
                                           size: i32,
                                           p: i32,
                                           n: i32|
     -> R {
        let bytes = match mem_get(&mut c, p, n) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        let Some((buf, changed)) = body_buffer(&mut c.data_mut().http, t) else {
            return Ok(status::BAD_ARGUMENT);
        };
        // (0, 0) prepends, a start at or past the end appends, else [start, start+size)
        // is replaced (spec: proxy_set_buffer_bytes)
        let start = (start as u32 as usize).min(buf.len());
        let end = start.saturating_add(size as u32 as usize).min(buf.len());
        let mut out = Vec::with_capacity(buf.len() - (end - start) + bytes.len());
        out.extend_from_slice(&buf[..start]);
        out.extend_from_slice(&bytes);
        out.extend_from_slice(&buf[end..]);
        *buf = Bytes::from(out);
        if let Some(ch) = changed {
            *ch = true;
        }
        Ok(status::OK)
    });

    // header maps
    def!("env", "proxy_get_header_map_size", |mut c: C<'_>,
                                              m: i32,
                                              ret: i32|
     -> R {
        let Some((pairs, _)) = header_map(&mut c.data_mut().http, m) else {
            return Ok(status::NOT_FOUND);
        };
        let size = abi::serialize_pairs(pairs).len();
        st(put_u32(&mut c, ret, size as u32).map(|()| status::OK))
    });
    def!("env", "proxy_get_header_map_pairs", |mut c: C<'_>,
                                               m: i32,
                                               rp: i32,
                                               rl: i32|
     -> R {
        let bytes = match header_map(&mut c.data_mut().http, m) {
            Some((pairs, _)) => abi::serialize_pairs(pairs),
            None => abi::serialize_pairs(&Vec::new()),
        };
        give(&mut c, &bytes, rp, rl)
    });
    def!("env", "proxy_set_header_map_pairs", |mut c: C<'_>,
                                               m: i32,
                                               p: i32,
                                               n: i32|
     -> R {
        let bytes = match mem_get(&mut c, p, n) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        let Some(new) = abi::deserialize_pairs(&bytes) else {
            return Ok(status::BAD_ARGUMENT);
        };
        let Some((pairs, changed)) = header_map(&mut c.data_mut().http, m) else {
            return Ok(status::BAD_ARGUMENT);
        };
        *pairs = new;
        *changed = true;
        Ok(status::OK)
    });
    def!("env", "proxy_get_header_map_value", |mut c: C<'_>,
                                               m: i32,
                                               kp: i32,
                                               kl: i32,
                                               rp: i32,
                                               rl: i32|
     -> R {
        let key = match get_str(&mut c, kp, kl) {
            Ok(k) => k.to_ascii_lowercase(),
            Err(s) => return Ok(s),
        };
        let Some((pairs, _)) = header_map(&mut c.data_mut().http, m) else {
            return Ok(status::NOT_FOUND);
        };
        let mut values = pairs.iter().filter(|(k, _)| *k == key).map(|(_, v)| v);
        let value = match (values.next(), values.next()) {
            (None, _) => return Ok(status::NOT_FOUND),
            (Some(v), None) => v.clone(),
            (Some(first), Some(second)) => {
                // several values: joined with ',' (RFC 9110 section 5.3), as Envoy does
                let mut joined = first.clone();
                for v in std::iter::once(second).chain(values) {
                    joined.push(b',');
                    joined.extend_from_slice(v);
                }
                joined
            }
        };
        give(&mut c, &value, rp, rl)
    });
    for (name, op) in [
        ("proxy_add_header_map_value", 0u8),
        ("proxy_replace_header_map_value", 1u8),
    ] {
        def!("env", name, move |mut c: C<'_>,
                                m: i32,
                                kp: i32,
                                kl: i32,
                                vp: i32,
                                vl: i32|
              -> R {
            let key = match get_str(&mut c, kp, kl) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return Ok(s),
            };
            let value = match mem_get(&mut c, vp, vl) {
                Ok(v) => v,
                Err(s) => return Ok(s),
            };
            let Some((pairs, changed)) = header_map(&mut c.data_mut().http, m) else {
                return Ok(status::BAD_ARGUMENT);
            };
            if op == 1 {
                if let Some(i) = pairs.iter().position(|(k, _)| *k == key) {
                    pairs[i].1 = value;
                    let mut seen = false;
                    pairs.retain(|(k, _)| {
                        if *k != key {
                            return true;
                        }
                        let keep = !seen;
                        seen = true;
                        keep
                    });
                    *changed = true;
                    return Ok(status::OK);
                }
            }
            pairs.push((key, value));
            *changed = true;
            Ok(status::OK)
        });
    }
    def!("env", "proxy_remove_header_map_value", |mut c: C<'_>,
                                                  m: i32,
                                                  kp: i32,
                                                  kl: i32|
     -> R {
        let key = match get_str(&mut c, kp, kl) {
            Ok(k) => k.to_ascii_lowercase(),
            Err(s) => return Ok(s),
        };
        let Some((pairs, changed)) = header_map(&mut c.data_mut().http, m) else {
            return Ok(status::BAD_ARGUMENT);
        };
        let before = pairs.len();
        pairs.retain(|(k, _)| *k != key);
        *changed |= pairs.len() != before;
        Ok(status::OK)
    });

    // stream control and local responses
    def!("env", "proxy_send_local_response", |mut c: C<'_>,
                                              code: i32,
                                              dp: i32,
                                              dl: i32,
                                              bp: i32,
                                              bl: i32,
                                              hp: i32,
                                              hl: i32,
                                              _grpc: i32|
     -> R {
        if !(200..=599).contains(&code) {
            return Ok(status::BAD_ARGUMENT);
        }
        let details = match mem_get(&mut c, dp, dl) {
            Ok(d) => String::from_utf8_lossy(&d).into_owned(),
            Err(s) => return Ok(s),
        };
        let body = match mem_get(&mut c, bp, bl) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        let headers = match mem_get(&mut c, hp, hl) {
            Ok(h) => match abi::deserialize_pairs(&h) {
                Some(p) => p,
                None => return Ok(status::BAD_ARGUMENT),
            },
            Err(s) => return Ok(s),
        };
        c.data_mut().http.local = Some(LocalResponse {
            status: code as u16,
            details,
            body: Bytes::from(body),
            headers,
        });
        Ok(status::OK)
    });
    def!("env", "proxy_continue_stream", |_c: C<'_>, _t: i32| -> R {
        Ok(status::OK)
    });
    def!("env", "proxy_close_stream", |mut c: C<'_>, _t: i32| -> R {
        let http = &mut c.data_mut().http;
        if http.local.is_none() {
            http.local = Some(LocalResponse::closed());
        }
        Ok(status::OK)
    });
    def!("env", "proxy_continue_request", |_c: C<'_>| -> R {
        Ok(status::OK)
    });
    def!("env", "proxy_continue_response", |_c: C<'_>| -> R {
        Ok(status::OK)
    });
    def!("env", "proxy_set_effective_context", |_c: C<'_>,
                                                _ctx: i32|
     -> R {
        Ok(status::OK)
    });
    def!("env", "proxy_done", |_c: C<'_>| -> R { Ok(status::OK) });

    // properties
    def!("env", "proxy_get_property", |mut c: C<'_>,
                                       pp: i32,
                                       pl: i32,
                                       rp: i32,
                                       rl: i32|
     -> R {
        let path = match mem_get(&mut c, pp, pl) {
            Ok(p) => p,
            Err(s) => return Ok(s),
        };
        let path = property_path(&path);
        let value = {
            let st = c.data_mut();
            match st.http.filter_state.get(&path) {
                Some(v) => Some(v.clone()),
                None => plugin_property(&st.plugin, &path)
                    .or_else(|| super::property(&mut st.http, &path)),
            }
        };
        match value {
            Some(v) => give(&mut c, &v, rp, rl),
            None => Ok(status::NOT_FOUND),
        }
    });
    def!("env", "proxy_set_property", |mut c: C<'_>,
                                       pp: i32,
                                       pl: i32,
                                       vp: i32,
                                       vl: i32|
     -> R {
        let path = match mem_get(&mut c, pp, pl) {
            Ok(p) => property_path(&p),
            Err(s) => return Ok(s),
        };
        let value = match mem_get(&mut c, vp, vl) {
            Ok(v) => v,
            Err(s) => return Ok(s),
        };
        let state = &mut c.data_mut().http.filter_state;
        if state.len() >= 256 && !state.contains_key(&path) || value.len() > MAX_SHARED_VALUE {
            return Ok(status::BAD_ARGUMENT);
        }
        state.insert(path, value);
        Ok(status::OK)
    });

    // shared data
    def!("env", "proxy_get_shared_data", |mut c: C<'_>,
                                          kp: i32,
                                          kl: i32,
                                          rp: i32,
                                          rl: i32,
                                          rc: i32|
     -> R {
        let key = match mem_get(&mut c, kp, kl) {
            Ok(k) => k,
            Err(s) => return Ok(s),
        };
        let vm_id = c.data().plugin.vm_id.clone();
        let found = SHARED_DATA
            .lock()
            .get(&vm_id)
            .and_then(|m| m.get(&key).cloned());
        let Some((value, cas)) = found else {
            return Ok(status::NOT_FOUND);
        };
        let s = give(&mut c, &value, rp, rl)?;
        if s != status::OK {
            return Ok(s);
        }
        st(put_u32(&mut c, rc, cas).map(|()| status::OK))
    });
    def!("env", "proxy_set_shared_data", |mut c: C<'_>,
                                          kp: i32,
                                          kl: i32,
                                          vp: i32,
                                          vl: i32,
                                          cas: i32|
     -> R {
        let key = match mem_get(&mut c, kp, kl) {
            Ok(k) => k,
            Err(s) => return Ok(s),
        };
        let value = match mem_get(&mut c, vp, vl) {
            Ok(v) => v,
            Err(s) => return Ok(s),
        };
        if value.len() + key.len() > MAX_SHARED_VALUE {
            return Ok(status::BAD_ARGUMENT);
        }
        let vm_id = c.data().plugin.vm_id.clone();
        let mut all = SHARED_DATA.lock();
        let data = all.entry(vm_id).or_default();
        let cas = cas as u32;
        let current = data.get(&key).map(|(_, c)| *c);
        if cas != 0 && current.is_some_and(|c| c != cas) {
            return Ok(status::CAS_MISMATCH);
        }
        let total: usize = data.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
        let old = data.get(&key).map_or(0, |(v, _)| key.len() + v.len());
        if total - old + key.len() + value.len() > MAX_SHARED_TOTAL {
            return Ok(status::BAD_ARGUMENT);
        }
        let next = current.map_or(1, |c| c.wrapping_add(1).max(1));
        data.insert(key, (value, next));
        Ok(status::OK)
    });

    // metrics
    def!("env", "proxy_define_metric", |mut c: C<'_>,
                                        kind: i32,
                                        np: i32,
                                        nl: i32,
                                        ret: i32|
     -> R {
        if !(abi::metric::COUNTER..=abi::metric::HISTOGRAM).contains(&kind) {
            return Ok(status::BAD_ARGUMENT);
        }
        let name = match get_str(&mut c, np, nl) {
            Ok(n) if !n.is_empty() && n.len() <= 256 => n,
            Ok(_) => return Ok(status::BAD_ARGUMENT),
            Err(s) => return Ok(s),
        };
        let id = {
            let mut metrics = c.data().plugin.metrics.lock();
            match metrics.iter().position(|m| m.name == name) {
                Some(i) if metrics[i].kind == kind => i + 1,
                Some(_) => return Ok(status::BAD_ARGUMENT),
                None if metrics.len() >= 1024 => return Ok(status::BAD_ARGUMENT),
                None => {
                    metrics.push(MetricValue {
                        name,
                        kind,
                        value: 0,
                        sum: 0,
                        count: 0,
                    });
                    metrics.len()
                }
            }
        };
        st(put_u32(&mut c, ret, id as u32).map(|()| status::OK))
    });
    def!("env", "proxy_increment_metric", |c: C<'_>,
                                           id: i32,
                                           delta: i64|
     -> R {
        let mut metrics = c.data().plugin.metrics.lock();
        let Some(m) = metrics.get_mut((id as u32 as usize).wrapping_sub(1)) else {
            return Ok(status::NOT_FOUND);
        };
        if m.kind == abi::metric::HISTOGRAM {
            return Ok(status::BAD_ARGUMENT);
        }
        m.value = m.value.saturating_add(delta);
        Ok(status::OK)
    });
    def!("env", "proxy_record_metric", |c: C<'_>,
                                        id: i32,
                                        value: i64|
     -> R {
        let mut metrics = c.data().plugin.metrics.lock();
        let Some(m) = metrics.get_mut((id as u32 as usize).wrapping_sub(1)) else {
            return Ok(status::NOT_FOUND);
        };
        if m.kind == abi::metric::HISTOGRAM {
            m.sum = m.sum.saturating_add(value);
            m.count += 1;
        } else {
            m.value = value;
        }
        Ok(status::OK)
    });
    def!("env", "proxy_get_metric", |mut c: C<'_>,
                                     id: i32,
                                     ret: i32|
     -> R {
        let value = {
            let metrics = c.data().plugin.metrics.lock();
            match metrics.get((id as u32 as usize).wrapping_sub(1)) {
                Some(m) if m.kind == abi::metric::HISTOGRAM => return Ok(status::BAD_ARGUMENT),
                Some(m) => m.value as u64,
                None => return Ok(status::NOT_FOUND),
            }
        };
        st(put_u64(&mut c, ret, value).map(|()| status::OK))
    });

    // WASI, as the spec lists it, under both names the toolchains use
    for wasi in ["wasi_snapshot_preview1", "wasi_unstable"] {
        def!(wasi, "fd_write", |mut c: C<'_>,
                                fd: i32,
                                iovs: i32,
                                n: i32,
                                ret: i32|
         -> R {
            if fd != 1 && fd != 2 {
                return Ok(errno::BADF);
            }
            let mut text = Vec::new();
            for i in 0..(n.max(0) as u32).min(1024) {
                let at = (iovs as u32).wrapping_add(i * 8) as i32;
                let Ok(iov) = mem_get(&mut c, at, 8) else {
                    return Ok(errno::FAULT);
                };
                let p = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let l = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match mem_get(&mut c, p as i32, l as i32) {
                    Ok(b) if text.len() + b.len() <= MAX_SHARED_VALUE => text.extend_from_slice(&b),
                    Ok(_) => {}
                    Err(_) => return Ok(errno::FAULT),
                }
            }
            let s = String::from_utf8_lossy(&text);
            let name = c.data().plugin.name.clone();
            for line in s.lines().filter(|l| !l.trim().is_empty()) {
                log_line(&name, if fd == 1 { 2 } else { 4 }, line);
            }
            Ok(if put_u32(&mut c, ret, text.len() as u32).is_ok() {
                errno::SUCCESS
            } else {
                errno::FAULT
            })
        });
        def!(wasi, "clock_time_get", |mut c: C<'_>,
                                      id: i32,
                                      _precision: i64,
                                      ret: i32|
         -> R {
            let ns = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                1 => c.data().plugin.started.elapsed().as_nanos() as u64,
                _ => return Ok(errno::INVAL),
            };
            Ok(if put_u64(&mut c, ret, ns).is_ok() {
                errno::SUCCESS
            } else {
                errno::FAULT
            })
        });
        def!(wasi, "random_get", |mut c: C<'_>, p: i32, n: i32| -> R {
            if n as u32 as usize > MAX_SHARED_VALUE {
                return Ok(errno::INVAL);
            }
            let mut bytes = vec![0u8; n as u32 as usize];
            rand::fill(&mut bytes[..]);
            Ok(if mem_put(&mut c, p, &bytes).is_ok() {
                errno::SUCCESS
            } else {
                errno::FAULT
            })
        });
        for name in ["environ_sizes_get", "args_sizes_get"] {
            def!(wasi, name, |mut c: C<'_>, a: i32, b: i32| -> R {
                Ok(
                    if put_u32(&mut c, a, 0).and(put_u32(&mut c, b, 0)).is_ok() {
                        errno::SUCCESS
                    } else {
                        errno::FAULT
                    },
                )
            });
        }
        for name in ["environ_get", "args_get"] {
            def!(wasi, name, |_c: C<'_>, _a: i32, _b: i32| -> R {
                Ok(errno::SUCCESS)
            });
        }
        def!(wasi, "sched_yield", |_c: C<'_>| -> R { Ok(errno::SUCCESS) });
        def!(wasi, "proc_exit", |_c: C<'_>,
                                 code: i32|
         -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the filter exited (proc_exit({code}))"
            )))
        });
    }

    // everything else the module imports: "unimplemented", never a trap
    for import in module.imports() {
        let key = (import.module().to_string(), import.name().to_string());
        if defined.contains(&key) {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            return Err(wasmtime::Error::msg(format!(
                "the module imports {}::{}, which is not a function; this host provides only functions",
                key.0, key.1
            )));
        };
        let code = if key.0.starts_with("wasi") {
            errno::NOTSUP
        } else {
            status::UNIMPLEMENTED
        };
        let results: Vec<ValType> = ty.results().collect();
        l.func_new(&key.0, &key.1, ty.clone(), move |_c, _params, out| {
            let mut first = true;
            for (slot, t) in out.iter_mut().zip(&results) {
                *slot = match t {
                    ValType::I32 if first => Val::I32(code),
                    ValType::I32 => Val::I32(0),
                    ValType::I64 => Val::I64(0),
                    ValType::F32 => Val::F32(0),
                    ValType::F64 => Val::F64(0),
                    _ => Val::I32(0),
                };
                first = false;
            }
            Ok(())
        })?;
        defined.insert(key);
    }
    Ok(l)
}

/// A property path as the SDKs send it (segments joined by NUL bytes), as a dotted name.
fn property_path(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    String::from_utf8_lossy(raw).replace('\0', ".")
}

/// The plugin's own well-known properties (spec "Well-known properties").
fn plugin_property(p: &PluginShared, path: &str) -> Option<Vec<u8>> {
    match path {
        "plugin_name" | "plugin_root_id" => Some(p.name.clone().into_bytes()),
        "plugin_vm_id" => Some(p.vm_id.clone().into_bytes()),
        _ => None,
    }
}
