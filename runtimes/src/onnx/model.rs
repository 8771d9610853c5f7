//! One decoder session and the per-sequence KV cache it runs on.
//!
//! The KV cache mirrors onnxruntime-genai's `past_present_share_buffer`: each sequence allocates,
//! once, one `[1, kv_heads, capacity, head_size]` buffer per layer for keys and one for values, on
//! the session's device, and binds the same buffer as `past_key_values.N.*` input and `present.N.*`
//! output through an [`IoBinding`]. GroupQueryAttention writes the new positions in place, so no
//! step copies the cache. The inputs are the ones onnxruntime-genai feeds a gpt-oss export:
//! `input_ids [1, S]` and `attention_mask [1, past + S]` of ones (the graph derives GQA's
//! `seqlens_k` and `total_sequence_length` from it), plus `position_ids`, `past_sequence_length`
//! and `total_sequence_length` when the config and the graph name them.
//!
//! The capacity is at least the sliding window plus its slack: GroupQueryAttention on windowed
//! layers refuses a shorter buffer.
//!
//! Windowed layers (genai_config `sliding_window.layers`) get window-sized buffers, as
//! onnxruntime-genai allocates them (`ComputeWindowedKvCacheSize` in its `windowed_kv_cache.cpp`):
//! `C = window + slack` positions, the slack being the config's `cache_slack` or, when that is 0,
//! 16 on the CPU and 0 on CUDA. GroupQueryAttention (`sliding_window_cache=1`, builder 0.18) keeps
//! the most recent positions of such a buffer at its start and evicts in steps: when a token
//! arrives at a full buffer it keeps the last `window - 1` and appends, so a buffer holding `T`
//! tokens has the last [`resident`]`(T, C, window)` of them at offsets `0..`. A gpt-oss
//! sequence's windowed half of the cache stays at 144 positions whatever its length, and the
//! attention reads its keys at the same offsets as onnxruntime-genai's (same numerics, same
//! greedy tokens). A prompt longer than `C` may be fed in chunks of any size: the kernel attends
//! over the past and the chunk before it evicts.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, Tensor, TensorElementType, TensorRefMut, ValueType};
use ort::AsPointer;

use super::genai_config::{layer_name, GenaiConfig};
use super::ModelError;
use crate::device::{Device, DeviceMap};

/// An integer graph input and its element type.
#[derive(Debug, Clone)]
struct IntInput {
    name: String,
    ty: TensorElementType,
}

/// Names, types and sizes, from `genai_config.json` checked against the graph.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    input_ids: IntInput,
    attention_mask: Option<IntInput>,
    position_ids: Option<IntInput>,
    seqlens_k: Option<IntInput>,
    total_sequence_length: Option<IntInput>,
    /// Per layer: (past key, past value, present key, present value).
    kv_names: Vec<[String; 4]>,
    kv_type: TensorElementType,
    logits: String,
    logits_type: TensorElementType,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    /// The smallest KV buffer the graph accepts (sliding window plus slack).
    pub min_kv_capacity: usize,
    /// Per layer: whether it attends over a sliding window.
    windowed: Vec<bool>,
    /// The sliding window in tokens (0: none).
    pub window: usize,
    /// Positions a windowed layer's buffer keeps beyond the window for decode steps (see the
    /// module documentation); set for the device at load.
    pub window_slack: usize,
    pub eos_token_ids: Vec<u32>,
}

/// A loaded decoder.
pub struct OnnxModel {
    session: Session,
    pub spec: ModelSpec,
    pub device: Device,
    kv_allocator: Allocator,
    cpu_memory: MemoryInfo<'static>,
}

/// The state of one sequence: its KV cache, bound in place, and how much of it is used.
pub struct SequenceCache {
    binding: IoBinding,
    /// Kept alive for the binding; two per layer (key, value).
    _kv: Vec<DynTensor>,
    /// `[1, 1, vocab]` on the CPU, bound as the logits output of decode steps.
    decode_logits: DynTensor,
    decode_logits_bound: bool,
    capacity: usize,
    /// Positions of each windowed layer's buffer (the most recent ones are kept).
    window_capacity: usize,
    len: usize,
    /// The last position's logits of the latest step, as f32.
    logits: Vec<f32>,
}

impl SequenceCache {
    /// Tokens held in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Logits of the last position of the latest step.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    pub(crate) fn logits_mut(&mut self) -> &mut Vec<f32> {
        &mut self.logits
    }
}

/// The decode batch: one KV buffer per layer of `[slots, kv_heads, capacity, head_size]`, bound
/// as both past and present, that every decoding sequence joins for its decode steps.
///
/// One run decodes a token for every row. Rows have their own lengths: the attention mask is
/// right-padded per row, so GroupQueryAttention derives each row's `seqlens_k` (where it writes the
/// new key and value, which positions it attends to, and the rotary position) from that row
/// alone. A free row is fed a dummy token at position 0; nothing reads it, and the next sequence
/// that takes the row overwrites it when its prefilled cache is loaded. Sequences join (after their
/// own prefill, which is copied in once) and leave between any two steps: continuous batching.
pub struct DecodePool {
    /// `bindings[k - 1]` runs the first `k` rows: views of the first `k` rows of every buffer (a
    /// row is the outermost axis, so they are contiguous), bound as past and present, and of the
    /// logits. A step runs only up to the last occupied row, so a lone sequence does not pay for
    /// the free rows (a free row still costs a full forward pass: on a mixture of experts, its
    /// own experts' weights).
    bindings: Vec<IoBinding>,
    /// The views the bindings use (kept alive with them; they do not own the memory).
    _views: Vec<Box<dyn std::any::Any>>,
    kv: Vec<DynTensor>,
    logits: DynTensor,
    slots: usize,
    capacity: usize,
    /// Positions per row of each windowed layer's buffer.
    window_capacity: usize,
    /// Tokens held per row; `None` for a free row.
    lens: Vec<Option<usize>>,
}

impl DecodePool {
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens held by `row`, or `None` when the row is free.
    pub fn row_len(&self, row: usize) -> Option<usize> {
        self.lens.get(row).copied().flatten()
    }

    /// The lowest free row.
    pub fn free_row(&self) -> Option<usize> {
        self.lens.iter().position(Option::is_none)
    }

    /// Frees `row` (its data stays until the next sequence overwrites it).
    pub fn release(&mut self, row: usize) {
        if let Some(l) = self.lens.get_mut(row) {
            *l = None;
        }
    }

    /// The last decode step's logits for `row`, as f32 in `out`.
    pub fn row_logits(
        &self,
        row: usize,
        vocab: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        out.clear();
        let range = row * vocab..(row + 1) * vocab;
        match self.logits.dtype().tensor_type() {
            Some(TensorElementType::Float16) => {
                let (_, data) = self
                    .logits
                    .try_extract_tensor::<half::f16>()
                    .map_err(internal("reading logits"))?;
                let part = data
                    .get(range)
                    .ok_or_else(|| ModelError::Runtime("logits row out of range".into()))?;
                out.extend(part.iter().map(|x| x.to_f32()));
            }
            _ => {
                let (_, data) = self
                    .logits
                    .try_extract_tensor::<f32>()
                    .map_err(internal("reading logits"))?;
                let part = data
                    .get(range)
                    .ok_or_else(|| ModelError::Runtime("logits row out of range".into()))?;
                out.extend_from_slice(part);
            }
        }
        Ok(())
    }
}

/// Model loading options.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: DeviceMap,
    /// ONNX Runtime intra-op threads; `None` lets ONNX Runtime choose (one per core).
    pub intra_threads: Option<usize>,
}

fn onnx_err(path: &Path) -> impl Fn(ort::Error) -> ModelError + '_ {
    move |e| ModelError::Onnx {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn internal(what: &'static str) -> impl Fn(ort::Error) -> ModelError {
    move |e| ModelError::Runtime(format!("{what}: {e}"))
}

impl OnnxModel {
    /// Loads `dir` (an onnxruntime-genai folder) into a session on the requested device.
    pub fn load(env: &Environment, dir: &Path, options: &ModelOptions) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        let config = GenaiConfig::load(dir)?;
        let model_path = dir.join(&config.model.decoder.filename);
        if !model_path.is_file() {
            return Err(ModelError::Io {
                path: model_path,
                reason:
                    "the model file named by genai_config.json model.decoder.filename is missing"
                        .into(),
            });
        }
        let (session, device) = build_session(env, &model_path, options)?;
        let mut spec = ModelSpec::new(&config, &GraphIo::of(&session), &model_path)?;
        if spec.window > 0 && spec.window_slack == 0 {
            // onnxruntime-genai's per-device default for `cache_slack: 0`.
            spec.window_slack = match device {
                Device::Cpu => 16,
                Device::Cuda(_) => 0,
            };
        }
        let kv_allocator = match device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(id) => {
                let info = MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id as i32,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(internal("CUDA memory info"))?;
                Allocator::new(&session, info).map_err(internal("CUDA allocator"))?
            }
        };
        let cpu_memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(internal("CPU memory info"))?;
        tracing::info!(
            model = %model_path.display(),
            device = %device,
            layers = spec.kv_names.len(),
            kv_heads = spec.num_kv_heads,
            head_size = spec.head_size,
            context_length = spec.context_length,
            min_kv_capacity = spec.min_kv_capacity,
            "loaded ONNX model"
        );
        Ok(OnnxModel {
            session,
            spec,
            device,
            kv_allocator,
            cpu_memory,
        })
    }

    /// The KV capacity a request needs: its prompt plus the tokens it may generate, within the
    /// context, and never below what the windowed layers require.
    pub fn capacity_for(&self, prompt_len: usize, max_new_tokens: usize) -> usize {
        prompt_len
            .saturating_add(max_new_tokens)
            .min(self.spec.context_length)
            .max(self.spec.min_kv_capacity)
            .max(1)
    }

    /// Positions of a windowed layer's buffer in a cache of `capacity`: `window + slack`, at most
    /// `capacity` (onnxruntime-genai's `ComputeWindowedKvCacheSize` without a search chunk size).
    /// `capacity` without a window.
    pub fn window_capacity(&self, capacity: usize) -> usize {
        if self.spec.window == 0 {
            return capacity;
        }
        self.spec
            .window
            .saturating_add(self.spec.window_slack)
            .min(capacity)
    }

    /// Allocates a sequence's KV buffers (once; they are reused for every step): `capacity`
    /// positions on full-attention layers, [`OnnxModel::window_capacity`] on windowed ones.
    pub fn new_sequence(&self, capacity: usize) -> Result<SequenceCache, ModelError> {
        let spec = &self.spec;
        let mut binding = self
            .session
            .create_binding()
            .map_err(internal("IoBinding"))?;
        let window_capacity = self.window_capacity(capacity);
        let mut kv = Vec::with_capacity(spec.kv_names.len() * 2);
        for ([past_k, past_v, present_k, present_v], &windowed) in
            spec.kv_names.iter().zip(&spec.windowed)
        {
            let positions = if windowed { window_capacity } else { capacity };
            let shape = [1usize, spec.num_kv_heads, positions, spec.head_size];
            for (past, present) in [(past_k, present_k), (past_v, present_v)] {
                let mut buffer = DynTensor::new(&self.kv_allocator, spec.kv_type, shape).map_err(|e| {
                    ModelError::Runtime(format!(
                        "could not allocate the KV cache [1, {}, {positions}, {}] for {} layers: {e}",
                        spec.num_kv_heads,
                        spec.head_size,
                        spec.kv_names.len()
                    ))
                })?;
                binding
                    .bind_input(past.as_str(), &buffer)
                    .map_err(internal("binding past KV"))?;
                binding
                    .bind_output(present.as_str(), &mut buffer)
                    .map_err(internal("binding present KV"))?;
                kv.push(buffer);
            }
        }
        let decode_logits = DynTensor::new(
            &Allocator::default(),
            spec.logits_type,
            [1usize, 1, spec.vocab_size],
        )
        .map_err(internal("logits buffer"))?;
        Ok(SequenceCache {
            binding,
            _kv: kv,
            decode_logits,
            decode_logits_bound: false,
            capacity,
            window_capacity,
            len: 0,
            logits: Vec::with_capacity(spec.vocab_size),
        })
    }

    /// Lowers the context length (never below what the windowed layers need).
    pub fn cap_context_length(&mut self, cap: usize) {
        let capped = cap.max(self.spec.min_kv_capacity).max(2);
        if capped < self.spec.context_length {
            tracing::info!(
                from = self.spec.context_length,
                to = capped,
                "context length capped"
            );
            self.spec.context_length = capped;
        }
    }

    /// Bytes of one position of one layer's key or value buffer (`kv_heads * head_size *
    /// element size`).
    fn kv_bytes_per_position(&self) -> u64 {
        let element: u64 = match self.spec.kv_type {
            TensorElementType::Float16 | TensorElementType::Bfloat16 => 2,
            TensorElementType::Float64 => 8,
            _ => 4,
        };
        self.spec.num_kv_heads as u64 * self.spec.head_size as u64 * element
    }

    /// Bytes of KV cache each further token of context takes in one sequence: keys and values of
    /// the full-attention layers (windowed layers hold a fixed `window + slack` positions).
    /// 49,152 for gpt-oss-20b in float32 (12 full layers of 8 heads of 64).
    pub fn kv_bytes_per_token(&self) -> u64 {
        let full = self.spec.windowed.iter().filter(|&&w| !w).count() as u64;
        2 * full * self.kv_bytes_per_position()
    }

    /// Whether decode steps can be batched on this device (the KV pool is filled by host copies).
    pub fn supports_batching(&self) -> bool {
        self.device == Device::Cpu
    }

    /// Allocates the decode batch: for every layer a key and a value buffer of `[slots, kv_heads,
    /// positions, head_size]` (`capacity` positions, [`OnnxModel::window_capacity`] on windowed
    /// layers), the `[slots, 1, vocab]` logits, and one binding per batch width (see
    /// [`DecodePool`]). The views are bound through ONNX Runtime's C API ([`bind_raw`]), the one
    /// place this crate needs `unsafe`.
    #[allow(unsafe_code)]
    pub fn new_pool(&self, slots: usize, capacity: usize) -> Result<DecodePool, ModelError> {
        let spec = &self.spec;
        if !self.supports_batching() {
            return Err(ModelError::Runtime(format!(
                "batched decoding is not supported on {}",
                self.device
            )));
        }
        let window_capacity = self.window_capacity(capacity);
        let mut kv = Vec::with_capacity(spec.kv_names.len() * 2);
        let mut positions_total = 0usize;
        for &windowed in &spec.windowed {
            let positions = if windowed { window_capacity } else { capacity };
            positions_total += 2 * positions;
            let shape = [slots, spec.num_kv_heads, positions, spec.head_size];
            for _ in 0..2 {
                let buffer = DynTensor::new(&self.kv_allocator, spec.kv_type, shape).map_err(|e| {
                    ModelError::Runtime(format!(
                        "could not allocate the decode KV pool [{slots}, {}, {positions}, {}] for {} layers: {e}",
                        spec.num_kv_heads,
                        spec.head_size,
                        spec.kv_names.len()
                    ))
                })?;
                kv.push(buffer);
            }
        }
        let mut logits = DynTensor::new(
            &Allocator::default(),
            spec.logits_type,
            [slots, 1, spec.vocab_size],
        )
        .map_err(internal("logits buffer"))?;
        let mut bindings = Vec::with_capacity(slots);
        let mut views: Vec<Box<dyn std::any::Any>> = Vec::new();
        for rows in 1..=slots {
            let mut binding = self
                .session
                .create_binding()
                .map_err(internal("IoBinding"))?;
            let names = spec
                .kv_names
                .iter()
                .flat_map(|[pk, pv, ok, ov]| [(pk, ok), (pv, ov)]);
            for ((past, present), buffer) in names.zip(kv.iter_mut()) {
                let Some((_, shape)) = tensor_info(buffer.dtype()) else {
                    return Err(ModelError::Runtime("a KV buffer is not a tensor".into()));
                };
                let mut shape = shape;
                shape[0] = rows as i64;
                let view = self.view(buffer, spec.kv_type, shape)?;
                // SAFETY: the view and the pool's buffer live as long as the binding (fields of
                // the same DecodePool, the bindings dropped first).
                unsafe {
                    bind_raw(&mut binding, true, past, view.as_ref())?;
                    bind_raw(&mut binding, false, present, view.as_ref())?;
                }
                views.push(view.into_any());
            }
            let view = self.view(
                &mut logits,
                spec.logits_type,
                vec![rows as i64, 1, spec.vocab_size as i64],
            )?;
            // SAFETY: as above.
            unsafe { bind_raw(&mut binding, false, &spec.logits, view.as_ref())? };
            views.push(view.into_any());
            bindings.push(binding);
        }
        tracing::info!(
            slots,
            capacity,
            window_capacity,
            mib = (positions_total as u64 * slots as u64 * self.kv_bytes_per_position()) >> 20,
            "decode pool allocated"
        );
        Ok(DecodePool {
            bindings,
            _views: views,
            kv,
            logits,
            slots,
            capacity,
            window_capacity,
            lens: vec![None; slots],
        })
    }

    /// A tensor over the first `shape[0]` rows of `buffer` (its memory, not a copy).
    #[allow(unsafe_code)]
    fn view(
        &self,
        buffer: &mut DynTensor,
        ty: TensorElementType,
        shape: Vec<i64>,
    ) -> Result<PoolView, ModelError> {
        let ptr = buffer.data_ptr_mut();
        let shape = ort::value::Shape::new(shape);
        let info = self.cpu_memory.clone();
        // SAFETY: `ptr` is the start of `buffer`, which holds at least `shape` (a prefix of its
        // rows) and outlives the view (see `new_pool`).
        unsafe {
            match ty {
                TensorElementType::Float16 => {
                    TensorRefMut::<half::f16>::from_raw(info, ptr, shape).map(PoolView::F16)
                }
                _ => TensorRefMut::<f32>::from_raw(info, ptr, shape).map(PoolView::F32),
            }
        }
        .map_err(internal("a view of the decode pool"))
    }

    /// Copies a prefilled sequence's cache into `row` of the pool (once per sequence).
    pub fn load_row(
        &self,
        pool: &mut DecodePool,
        row: usize,
        seq: &SequenceCache,
    ) -> Result<(), ModelError> {
        if row >= pool.slots || seq.len > pool.capacity {
            return Err(ModelError::Runtime(format!(
                "row {row} / {} tokens do not fit the pool ({} rows of {})",
                seq.len, pool.slots, pool.capacity
            )));
        }
        let heads = self.spec.num_kv_heads;
        let hd = self.spec.head_size;
        // Two buffers (key, value) per layer, in the order they were allocated.
        let layer_of_buffer = self.spec.windowed.iter().flat_map(|&w| [w, w]);
        for ((dst, src), windowed) in pool.kv.iter_mut().zip(&seq._kv).zip(layer_of_buffer) {
            let (dst_cap, src_cap, window) = if windowed {
                (pool.window_capacity, seq.window_capacity, self.spec.window)
            } else {
                (pool.capacity, seq.capacity, 0)
            };
            let layout = RowCopy {
                row,
                heads,
                head_size: hd,
                dst_cap,
                src_cap,
                len: seq.len,
                window,
            };
            match self.spec.kv_type {
                TensorElementType::Float16 => copy_rows::<half::f16>(dst, src, &layout)?,
                _ => copy_rows::<f32>(dst, src, &layout)?,
            }
        }
        pool.lens[row] = Some(seq.len);
        Ok(())
    }

    /// One decode step for every row of the pool: `tokens[row]` is fed to each occupied row.
    /// Read the results with [`DecodePool::row_logits`].
    pub fn decode_pool(&mut self, pool: &mut DecodePool, tokens: &[u32]) -> Result<(), ModelError> {
        let spec = &self.spec;
        if tokens.len() != pool.slots {
            return Err(ModelError::Runtime(format!(
                "{} tokens for {} rows",
                tokens.len(),
                pool.slots
            )));
        }
        // Rows up to the last occupied one run; a free row among them gets a dummy at position 0.
        let Some(last) = pool.lens.iter().rposition(Option::is_some) else {
            return Ok(());
        };
        let slots = last + 1;
        let lens = &pool.lens[..slots];
        let totals: Vec<usize> = lens.iter().map(|l| l.map_or(1, |n| n + 1)).collect();
        let width = totals.iter().copied().max().unwrap_or(1);
        if width > pool.capacity {
            return Err(ModelError::Runtime(format!(
                "the decode pool holds {} tokens per row; {width} do not fit",
                pool.capacity
            )));
        }
        let ids: Vec<i64> = tokens
            .iter()
            .zip(lens)
            .map(|(&t, l)| if l.is_some() { i64::from(t) } else { 0 })
            .collect();
        let binding = &mut pool.bindings[last];
        bind_ints(binding, &spec.input_ids, vec![slots as i64, 1], ids)?;
        if let Some(mask) = &spec.attention_mask {
            let mut m = vec![0i64; slots * width];
            for (r, &t) in totals.iter().enumerate() {
                m[r * width..r * width + t].fill(1);
            }
            bind_ints(binding, mask, vec![slots as i64, width as i64], m)?;
        }
        if let Some(pos) = &spec.position_ids {
            let p = totals.iter().map(|&t| t as i64 - 1).collect();
            bind_ints(binding, pos, vec![slots as i64, 1], p)?;
        }
        if let Some(k) = &spec.seqlens_k {
            let p = totals.iter().map(|&t| t as i64 - 1).collect();
            bind_ints(binding, k, vec![slots as i64], p)?;
        }
        if let Some(t) = &spec.total_sequence_length {
            bind_ints(binding, t, vec![], vec![width as i64])?;
        }
        let outputs = self
            .session
            .run_binding(binding)
            .map_err(|e| ModelError::Runtime(format!("ONNX Runtime run failed: {e}")))?;
        drop(outputs);
        for l in pool.lens.iter_mut().flatten() {
            *l += 1;
        }
        Ok(())
    }

    /// Feeds `tokens` after what the cache holds and leaves the last position's logits in
    /// [`SequenceCache::logits`].
    pub fn forward(&mut self, seq: &mut SequenceCache, tokens: &[u32]) -> Result<(), ModelError> {
        let spec = &self.spec;
        let s = tokens.len();
        if s == 0 {
            return Err(ModelError::Runtime("forward with no tokens".into()));
        }
        let total = seq.len + s;
        if total > seq.capacity {
            return Err(ModelError::Runtime(format!(
                "the KV cache holds {} tokens; {total} do not fit",
                seq.capacity
            )));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        bind_ints(&mut seq.binding, &spec.input_ids, vec![1, s as i64], ids)?;
        if let Some(mask) = &spec.attention_mask {
            bind_ints(
                &mut seq.binding,
                mask,
                vec![1, total as i64],
                vec![1; total],
            )?;
        }
        if let Some(pos) = &spec.position_ids {
            let positions = (seq.len as i64..total as i64).collect();
            bind_ints(&mut seq.binding, pos, vec![1, s as i64], positions)?;
        }
        if let Some(k) = &spec.seqlens_k {
            bind_ints(&mut seq.binding, k, vec![1], vec![total as i64 - 1])?;
        }
        if let Some(t) = &spec.total_sequence_length {
            bind_ints(&mut seq.binding, t, vec![], vec![total as i64])?;
        }
        // Decode steps write into a preallocated [1, 1, vocab] buffer; a prefill's [1, S, vocab]
        // is allocated by ONNX Runtime on the CPU.
        if s == 1 {
            if !seq.decode_logits_bound {
                seq.binding
                    .bind_output(spec.logits.as_str(), &mut seq.decode_logits)
                    .map_err(internal("binding logits"))?;
                seq.decode_logits_bound = true;
            }
        } else {
            seq.binding
                .bind_output_to_device(spec.logits.as_str(), &self.cpu_memory)
                .map_err(internal("binding logits"))?;
            seq.decode_logits_bound = false;
        }

        let outputs = self
            .session
            .run_binding(&seq.binding)
            .map_err(|e| ModelError::Runtime(format!("ONNX Runtime run failed: {e}")))?;
        let logits = outputs.get(spec.logits.as_str()).ok_or_else(|| {
            ModelError::Runtime(format!("the run returned no `{}` output", spec.logits))
        })?;
        let v = spec.vocab_size;
        seq.logits.clear();
        match spec.logits_type {
            TensorElementType::Float32 => {
                let (_, data) = logits
                    .try_extract_tensor::<f32>()
                    .map_err(internal("reading logits"))?;
                let last = data.len().checked_sub(v).ok_or_else(|| {
                    ModelError::Runtime(format!(
                        "logits hold {} values, fewer than the vocabulary",
                        data.len()
                    ))
                })?;
                seq.logits.extend_from_slice(&data[last..]);
            }
            TensorElementType::Float16 => {
                let (_, data) = logits
                    .try_extract_tensor::<half::f16>()
                    .map_err(internal("reading logits"))?;
                let last = data.len().checked_sub(v).ok_or_else(|| {
                    ModelError::Runtime(format!(
                        "logits hold {} values, fewer than the vocabulary",
                        data.len()
                    ))
                })?;
                seq.logits.extend(data[last..].iter().map(|x| x.to_f32()));
            }
            other => {
                return Err(ModelError::Runtime(format!(
                    "unsupported logits type {other:?}"
                )))
            }
        }
        drop(outputs);
        seq.len = total;
        Ok(())
    }
}

/// What the prefix cache keeps of one block of a prefilled prompt (positions `start..end`):
/// enough for a later prompt that starts with the same `end` tokens to go on from `end` as if it
/// had computed them (see [`super::prefix_cache`]).
pub struct KvBlock {
    start: usize,
    end: usize,
    /// Positions `start..end` of every full-attention layer's key and value buffer, in allocation
    /// order: `[heads, end - start, head_size]` each.
    full: Vec<KvData>,
    /// Every windowed layer's key and value buffer as it stood once position `end - 1` was
    /// written: its first `window_resident` positions (the most recent ones, see [`resident`]),
    /// `[heads, window_resident, head_size]` each.
    windows: Vec<KvData>,
    window_resident: usize,
    bytes: usize,
}

impl super::prefix_cache::Footprint for KvBlock {
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// KV values in the cache's element type.
enum KvData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

/// The KV element types the engine handles, and their [`KvData`] variant.
trait KvElement: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static {
    fn wrap(v: Vec<Self>) -> KvData;
    fn unwrap(d: &KvData) -> Option<&[Self]>;
}

impl KvElement for f32 {
    fn wrap(v: Vec<Self>) -> KvData {
        KvData::F32(v)
    }
    fn unwrap(d: &KvData) -> Option<&[Self]> {
        match d {
            KvData::F32(v) => Some(v),
            KvData::F16(_) => None,
        }
    }
}

impl KvElement for half::f16 {
    fn wrap(v: Vec<Self>) -> KvData {
        KvData::F16(v)
    }
    fn unwrap(d: &KvData) -> Option<&[Self]> {
        match d {
            KvData::F16(v) => Some(v),
            KvData::F32(_) => None,
        }
    }
}

impl OnnxModel {
    /// Copies the block `start..seq.len()` of a sequence's own cache out for the prefix cache:
    /// the block's positions on full-attention layers and the windowed layers' buffers as they
    /// stand (CPU caches only).
    pub fn export_block(&self, seq: &SequenceCache, start: usize) -> Result<KvBlock, ModelError> {
        match self.spec.kv_type {
            TensorElementType::Float16 => self.export_block_as::<half::f16>(seq, start),
            _ => self.export_block_as::<f32>(seq, start),
        }
    }

    fn export_block_as<T: KvElement>(
        &self,
        seq: &SequenceCache,
        start: usize,
    ) -> Result<KvBlock, ModelError> {
        let (heads, hd, end) = (self.spec.num_kv_heads, self.spec.head_size, seq.len);
        if start >= end {
            return Err(ModelError::Runtime(format!(
                "an empty block {start}..{end} for the prefix cache"
            )));
        }
        let window_resident = resident(end, seq.window_capacity, self.spec.window);
        let (mut full, mut windows, mut elements) = (Vec::new(), Vec::new(), 0usize);
        let layer_of_buffer = self.spec.windowed.iter().flat_map(|&w| [w, w]);
        for (buffer, windowed) in seq._kv.iter().zip(layer_of_buffer) {
            let (_, src) = buffer
                .try_extract_tensor::<T>()
                .map_err(internal("reading a KV buffer"))?;
            let (cap, from, to) = if windowed {
                (seq.window_capacity, 0, window_resident)
            } else {
                (seq.capacity, start, end)
            };
            let mut out = Vec::with_capacity(heads * (to - from) * hd);
            for h in 0..heads {
                let part = src
                    .get((h * cap + from) * hd..(h * cap + to) * hd)
                    .ok_or_else(|| ModelError::Runtime("KV export out of range".into()))?;
                out.extend_from_slice(part);
            }
            elements += out.len();
            if windowed {
                windows.push(T::wrap(out));
            } else {
                full.push(T::wrap(out));
            }
        }
        Ok(KvBlock {
            start,
            end,
            full,
            windows,
            window_resident,
            bytes: elements * std::mem::size_of::<T>(),
        })
    }

    /// Loads cached blocks (`blocks[0]` starting at 0, each where the previous one ends) into a
    /// fresh sequence, which then holds their tokens and goes on from the last block's end
    /// exactly as if it had computed them.
    pub fn import_blocks(
        &self,
        seq: &mut SequenceCache,
        blocks: &[&KvBlock],
    ) -> Result<(), ModelError> {
        match self.spec.kv_type {
            TensorElementType::Float16 => self.import_blocks_as::<half::f16>(seq, blocks),
            _ => self.import_blocks_as::<f32>(seq, blocks),
        }
    }

    fn import_blocks_as<T: KvElement>(
        &self,
        seq: &mut SequenceCache,
        blocks: &[&KvBlock],
    ) -> Result<(), ModelError> {
        let Some(last) = blocks.last() else {
            return Ok(());
        };
        let contiguous = blocks
            .iter()
            .scan(0usize, |at, b| {
                let ok = b.start == *at;
                *at = b.end;
                Some(ok)
            })
            .all(|ok| ok);
        if seq.len != 0 || !contiguous || last.end > seq.capacity {
            return Err(ModelError::Runtime(format!(
                "cached blocks up to {} do not fit a sequence of {} holding {}",
                last.end, seq.capacity, seq.len
            )));
        }
        let (heads, hd, end) = (self.spec.num_kv_heads, self.spec.head_size, last.end);
        let want = resident(end, seq.window_capacity, self.spec.window);
        let have = last.window_resident;
        if !last.windows.is_empty() && want > have {
            return Err(ModelError::Runtime(format!(
                "the sequence needs the last {want} window positions; the block kept {have}"
            )));
        }
        let (mut f, mut w) = (0usize, 0usize);
        let layer_of_buffer = self.spec.windowed.iter().flat_map(|&w| [w, w]);
        for (buffer, windowed) in seq._kv.iter_mut().zip(layer_of_buffer) {
            let (_, dst) = buffer
                .try_extract_tensor_mut::<T>()
                .map_err(internal("writing a KV buffer"))?;
            let out_of_range = || ModelError::Runtime("KV import out of range".into());
            if windowed {
                let src = last
                    .windows
                    .get(w)
                    .and_then(T::unwrap)
                    .ok_or_else(out_of_range)?;
                w += 1;
                let cap = seq.window_capacity;
                for h in 0..heads {
                    let s = (h * have + have - want) * hd;
                    let d = h * cap * hd;
                    let (Some(from), Some(to)) =
                        (src.get(s..s + want * hd), dst.get_mut(d..d + want * hd))
                    else {
                        return Err(out_of_range());
                    };
                    to.copy_from_slice(from);
                }
            } else {
                for b in blocks {
                    let src = b.full.get(f).and_then(T::unwrap).ok_or_else(out_of_range)?;
                    let n = b.end - b.start;
                    for h in 0..heads {
                        let s = h * n * hd;
                        let d = (h * seq.capacity + b.start) * hd;
                        let (Some(from), Some(to)) =
                            (src.get(s..s + n * hd), dst.get_mut(d..d + n * hd))
                        else {
                            return Err(out_of_range());
                        };
                        to.copy_from_slice(from);
                    }
                }
                f += 1;
            }
        }
        seq.len = end;
        Ok(())
    }
}

/// Copies `len` positions of every head from a `[1, heads, src_cap, hd]` buffer into row `row`
/// of a `[slots, heads, dst_cap, hd]` buffer.
#[allow(clippy::too_many_arguments)]
fn copy_rows<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
    dst: &mut DynTensor,
    src: &DynTensor,
    c: &RowCopy,
) -> Result<(), ModelError> {
    let hd = c.head_size;
    let have = resident(c.len, c.src_cap, c.window);
    let want = resident(c.len, c.dst_cap, c.window);
    if want > have {
        return Err(ModelError::Runtime(format!(
            "the decode pool needs the last {want} positions; the prefill cache kept {have}"
        )));
    }
    let skip = have - want;
    let (_, src) = src
        .try_extract_tensor::<T>()
        .map_err(internal("reading the prefill cache"))?;
    let (_, dst) = dst
        .try_extract_tensor_mut::<T>()
        .map_err(internal("writing the decode pool"))?;
    for h in 0..c.heads {
        let s = (h * c.src_cap + skip) * hd;
        let d = (c.row * c.heads + h) * c.dst_cap * hd;
        let (Some(from), Some(to)) = (src.get(s..s + want * hd), dst.get_mut(d..d + want * hd))
        else {
            return Err(ModelError::Runtime("KV copy out of range".into()));
        };
        to.copy_from_slice(from);
    }
    Ok(())
}

/// Where one layer buffer of a prefilled sequence goes in the decode pool.
struct RowCopy {
    row: usize,
    heads: usize,
    head_size: usize,
    dst_cap: usize,
    src_cap: usize,
    /// Tokens the sequence holds.
    len: usize,
    /// The layer's sliding window (0: a full-attention layer, whose buffer holds every token).
    window: usize,
}

/// How many of `len` tokens a KV buffer of `capacity` positions holds, the most recent ones, at
/// its start. Full-attention layers hold them all. A windowed layer's buffer
/// (GroupQueryAttention with `sliding_window_cache=1`) fills up to `capacity`; the token after
/// that makes it keep the last `window - 1` and append, and so on: after `len > capacity` tokens it
/// holds `window + (len - capacity - 1) mod (capacity - window + 1)`. Measured on ONNX Runtime
/// 1.31.1 against a buffer that never evicts, for prompts fed at once, in chunks and token by
/// token (the layout depends on `len` alone).
pub fn resident(len: usize, capacity: usize, window: usize) -> usize {
    if window == 0 || len <= capacity || capacity < window {
        return len.min(capacity);
    }
    window + (len - capacity - 1) % (capacity - window + 1)
}

/// A view of the first rows of a decode-pool buffer, in its element type.
enum PoolView {
    F32(TensorRefMut<'static, f32>),
    F16(TensorRefMut<'static, half::f16>),
}

impl PoolView {
    fn as_ref(&self) -> &dyn AsPointer<Sys = ort::sys::OrtValue> {
        match self {
            PoolView::F32(v) => &**v,
            PoolView::F16(v) => &**v,
        }
    }

    fn into_any(self) -> Box<dyn std::any::Any> {
        match self {
            PoolView::F32(v) => Box::new(v),
            PoolView::F16(v) => Box::new(v),
        }
    }
}

/// Binds `value` as input (`input`) or output `name` of `binding` through ONNX Runtime's C API.
/// ort's own `bind_input` copies a tensor over borrowed memory (so that inputs cannot alias), and
/// its `run_binding` reads back only the outputs bound through it; the decode pool's views must
/// alias (past and present are one buffer) and the pool reads its logits itself.
///
/// # Safety
/// `value`, and the memory it views, must stay valid while `binding` is used.
#[allow(unsafe_code)]
unsafe fn bind_raw(
    binding: &mut IoBinding,
    input: bool,
    name: &str,
    value: &dyn AsPointer<Sys = ort::sys::OrtValue>,
) -> Result<(), ModelError> {
    let api = ort::api();
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| ModelError::Runtime(format!("the name `{name}` holds a NUL byte")))?;
    let bind = if input { api.BindInput } else { api.BindOutput };
    // SAFETY: the pointers are valid (the caller's contract for `value`; `binding` is live).
    let status = unsafe { bind(binding.ptr_mut(), c_name.as_ptr(), value.ptr()) };
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status is an OrtStatus that we own and release once.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(ModelError::Runtime(format!("binding `{name}`: {message}")))
}

/// Binds an integer input, converting to the graph's element type.
fn bind_ints(
    binding: &mut IoBinding,
    input: &IntInput,
    shape: Vec<i64>,
    values: Vec<i64>,
) -> Result<(), ModelError> {
    let result = match input.ty {
        TensorElementType::Int32 => {
            let values: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
            Tensor::from_array((shape, values))
                .and_then(|t| binding.bind_input(input.name.as_str(), &t))
        }
        _ => Tensor::from_array((shape, values))
            .and_then(|t| binding.bind_input(input.name.as_str(), &t)),
    };
    result.map_err(|e| ModelError::Runtime(format!("binding `{}`: {e}", input.name)))
}

/// Creates the session on the requested device; `auto` falls back to the CPU with a log line.
fn build_session(
    env: &Environment,
    model_path: &Path,
    options: &ModelOptions,
) -> Result<(Session, Device), ModelError> {
    let to_err = onnx_err(model_path);
    let mut builder = Session::builder(env)
        .map_err(&to_err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| to_err(e.into()))?;
    if let Some(n) = options.intra_threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| to_err(e.into()))?;
    }
    let (mut builder, device) = match options.device {
        DeviceMap::Cpu => (builder, Device::Cpu),
        DeviceMap::Cuda(id) => match cuda_provider(id) {
            Some(ep) => {
                let b = builder
                    .with_execution_providers([ep])
                    .map_err(|e| ModelError::Cuda {
                        device: id,
                        reason: e.to_string(),
                    })?;
                (b, Device::Cuda(id))
            }
            None => {
                return Err(ModelError::Cuda {
                    device: id,
                    reason: "this build of gpt-oss-runtimes has no CUDA support (feature `cuda`)"
                        .into(),
                })
            }
        },
        DeviceMap::Auto => match cuda_provider(0) {
            Some(ep) => match builder.with_execution_providers([ep]) {
                Ok(b) => {
                    tracing::info!(
                        "device auto: the CUDA execution provider loaded; running on cuda:0"
                    );
                    (b, Device::Cuda(0))
                }
                Err(e) => {
                    tracing::warn!(reason = %e, "device auto: the CUDA execution provider is not available; running on the CPU");
                    (e.recover(), Device::Cpu)
                }
            },
            None => {
                tracing::warn!("device auto: built without CUDA support; running on the CPU");
                (builder, Device::Cpu)
            }
        },
    };
    let session = builder.commit_from_file(model_path).map_err(&to_err)?;
    Ok((session, device))
}

#[cfg(feature = "cuda")]
fn cuda_provider(id: u32) -> Option<ort::ep::ExecutionProviderDispatch> {
    Some(
        ort::ep::CUDA::default()
            .with_device_id(id as i32)
            .build()
            .error_on_failure(),
    )
}

#[cfg(not(feature = "cuda"))]
fn cuda_provider(_id: u32) -> Option<ort::ep::ExecutionProviderDispatch> {
    None
}

impl ModelSpec {
    /// Decoder layers.
    pub fn layers(&self) -> usize {
        self.kv_names.len()
    }

    /// The layers that attend over a sliding window.
    pub fn windowed_layers(&self) -> Vec<usize> {
        (0..self.windowed.len())
            .filter(|&l| self.windowed[l])
            .collect()
    }

    /// Element type of the KV cache.
    pub fn kv_type(&self) -> TensorElementType {
        self.kv_type
    }

    /// Element type of the logits.
    pub fn logits_type(&self) -> TensorElementType {
        self.logits_type
    }
}

/// One graph input or output: its name, and its element type and shape when it is a tensor
/// (`-1` for a symbolic dimension).
#[derive(Debug, Clone)]
pub struct GraphValue {
    pub name: String,
    pub tensor: Option<(TensorElementType, Vec<i64>)>,
}

/// A graph's inputs and outputs, what [`ModelSpec::new`] checks `genai_config.json` against.
#[derive(Debug, Clone, Default)]
pub struct GraphIo {
    pub inputs: Vec<GraphValue>,
    pub outputs: Vec<GraphValue>,
}

impl GraphIo {
    /// The inputs and outputs of a loaded session.
    pub fn of(session: &Session) -> Self {
        let value = |name: &str, ty: &ValueType| GraphValue {
            name: name.to_string(),
            tensor: tensor_info(ty),
        };
        GraphIo {
            inputs: session
                .inputs()
                .iter()
                .map(|i| value(i.name(), i.dtype()))
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|o| value(o.name(), o.dtype()))
                .collect(),
        }
    }
}

impl ModelSpec {
    /// Checks `config` against the graph's inputs and outputs (`model_path` names the files in
    /// errors): every name the config gives exists, KV tensors are rank 4 with the config's heads
    /// and head size and one element type, logits are float32 or float16 of the vocabulary's
    /// width, and the graph takes no input the config does not describe.
    pub fn new(config: &GenaiConfig, io: &GraphIo, model_path: &Path) -> Result<Self, ModelError> {
        let d = &config.model.decoder;
        let config_path = model_path.with_file_name("genai_config.json");
        let mismatch = |reason: String| ModelError::Mismatch {
            config: config_path.clone(),
            model: model_path.to_path_buf(),
            reason,
        };
        let input_type = |name: &str| -> Result<(TensorElementType, Vec<i64>), ModelError> {
            let outlet = io.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
                mismatch(format!(
                    "the config names input `{name}`, which the graph does not have (it has: {})",
                    names(io.inputs.iter().map(|i| i.name.as_str()))
                ))
            })?;
            outlet
                .tensor
                .clone()
                .ok_or_else(|| mismatch(format!("input `{name}` is not a tensor")))
        };
        let output_type = |name: &str| -> Result<(TensorElementType, Vec<i64>), ModelError> {
            let outlet = io.outputs.iter().find(|o| o.name == name).ok_or_else(|| {
                mismatch(format!(
                    "the config names output `{name}`, which the graph does not have (it has: {})",
                    names(io.outputs.iter().map(|o| o.name.as_str()))
                ))
            })?;
            outlet
                .tensor
                .clone()
                .ok_or_else(|| mismatch(format!("output `{name}` is not a tensor")))
        };
        let int_input = |name: &str| -> Result<IntInput, ModelError> {
            let (ty, _) = input_type(name)?;
            match ty {
                TensorElementType::Int64 | TensorElementType::Int32 => Ok(IntInput {
                    name: name.to_string(),
                    ty,
                }),
                other => Err(mismatch(format!(
                    "input `{name}` has type {other:?}; expected int32 or int64"
                ))),
            }
        };
        // Optional inputs count only when the graph has them.
        let optional = |name: &Option<String>| -> Result<Option<IntInput>, ModelError> {
            match name {
                Some(n) if io.inputs.iter().any(|i| &i.name == n) => int_input(n).map(Some),
                _ => Ok(None),
            }
        };

        let input_ids = int_input(&d.inputs.input_ids)?;
        let attention_mask = optional(&d.inputs.attention_mask)?;
        let position_ids = optional(&d.inputs.position_ids)?;
        let seqlens_k = optional(&d.inputs.past_sequence_length)?;
        let total_sequence_length = optional(&d.inputs.total_sequence_length)?;

        let layers = d.num_hidden_layers;
        let mut kv_names = Vec::with_capacity(layers as usize);
        let mut kv_type = None;
        for layer in 0..layers {
            let names4 = [
                layer_name(&d.inputs.past_key_names, layer),
                layer_name(&d.inputs.past_value_names, layer),
                layer_name(&d.outputs.present_key_names, layer),
                layer_name(&d.outputs.present_value_names, layer),
            ];
            for (i, name) in names4.iter().enumerate() {
                let (ty, shape) = if i < 2 {
                    input_type(name)?
                } else {
                    output_type(name)?
                };
                if *kv_type.get_or_insert(ty) != ty {
                    return Err(mismatch(format!(
                        "KV tensor `{name}` has type {ty:?}, unlike layer 0"
                    )));
                }
                if shape.len() != 4 {
                    return Err(mismatch(format!(
                        "KV tensor `{name}` has rank {}, expected 4",
                        shape.len()
                    )));
                }
                for (axis, expected) in [(1usize, d.num_key_value_heads), (3, d.head_size)] {
                    if shape[axis] > 0 && shape[axis] != i64::from(expected) {
                        return Err(mismatch(format!(
                            "KV tensor `{name}` has {} on axis {axis}; the config says {expected}",
                            shape[axis]
                        )));
                    }
                }
            }
            kv_names.push(names4);
        }
        let kv_type = kv_type.ok_or_else(|| mismatch("the model has no layers".into()))?;
        let (window, window_slack, windowed) = match &d.sliding_window {
            Some(w) => (
                w.window_size as usize,
                w.cache_slack as usize,
                (0..layers)
                    .map(|l| w.layers.as_ref().is_none_or(|ls| ls.contains(&l)))
                    .collect(),
            ),
            None => (0, 0, vec![false; layers as usize]),
        };

        let (logits_type, logits_shape) = output_type(&d.outputs.logits)?;
        if !matches!(
            logits_type,
            TensorElementType::Float32 | TensorElementType::Float16
        ) {
            return Err(mismatch(format!(
                "logits have type {logits_type:?}; expected float32 or float16"
            )));
        }
        let vocab = config.model.vocab_size as usize;
        if let Some(&last) = logits_shape.last() {
            if last > 0 && last as usize != vocab {
                return Err(mismatch(format!(
                    "the graph's logits have {last} entries; the config's vocab_size is {vocab}"
                )));
            }
        }
        let known: Vec<&str> = [
            Some(&input_ids),
            attention_mask.as_ref(),
            position_ids.as_ref(),
            seqlens_k.as_ref(),
            total_sequence_length.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|i| i.name.as_str())
        .chain(kv_names.iter().flat_map(|n| [n[0].as_str(), n[1].as_str()]))
        .collect();
        if let Some(unknown) = io.inputs.iter().find(|i| !known.contains(&i.name.as_str())) {
            return Err(mismatch(format!(
                "the graph takes input `{}`, which genai_config.json does not describe",
                unknown.name
            )));
        }

        Ok(ModelSpec {
            input_ids,
            attention_mask,
            position_ids,
            seqlens_k,
            total_sequence_length,
            kv_names,
            kv_type,
            logits: d.outputs.logits.clone(),
            logits_type,
            num_kv_heads: d.num_key_value_heads as usize,
            head_size: d.head_size as usize,
            vocab_size: vocab,
            context_length: config.model.context_length as usize,
            min_kv_capacity: config.min_kv_capacity() as usize,
            windowed,
            window,
            window_slack,
            eos_token_ids: config.eos_token_ids(),
        })
    }
}

fn tensor_info(t: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// For error messages: the folder a model was loaded from.
pub fn describe(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::resident;

    #[test]
    fn a_windowed_buffer_keeps_what_group_query_attention_keeps() {
        // Measured on the tiny fixture (window 16): tokens held after `len` for capacities 16-39.
        let window = 16;
        for (len, capacity, held) in [
            (10, 16, 10),
            (16, 16, 16),
            (17, 16, 16),
            (89, 16, 16),
            (33, 32, 16),
            (49, 32, 32),
            (50, 32, 16),
            (89, 32, 21),
            (40, 39, 16),
            (89, 39, 17),
            (21, 20, 16),
            (77, 20, 17),
        ] {
            assert_eq!(resident(len, capacity, window), held, "{len} in {capacity}");
        }
        // gpt-oss on the CPU: window 128 plus 16, between 128 and 144 held at any length.
        assert!((1000..1200).all(|len| (128..=144).contains(&resident(len, 144, 128))));
        // A full-attention layer holds every token it has room for.
        assert_eq!(resident(89, 200, 0), 89);
    }
}
