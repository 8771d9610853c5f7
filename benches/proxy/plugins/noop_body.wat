;; noop_body: a benchmark plugin that is called on the request and response bodies and does
;; nothing (returns CONTINUE, never PAUSE: nothing is buffered). It exports no header callback:
;; it measures the cost of calling the guest on every body chunk, both ways.
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 4096))

  ;; A bump allocator (the host calls it only to hand buffers over; this plugin asks for none).
  ;; It resets on every body callback, as nothing outlives a callback.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $size))))
    (local.set $have (i64.mul (i64.extend_i32_u (memory.size)) (i64.const 65536)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i64.gt_u (local.get $end) (i64.const 0xFFFFFFFF)) (then (return (i32.const 0))))
        (if (i32.eq
              (memory.grow (i32.wrap_i64 (i64.shr_u
                (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (global.set $top (i32.const 4096))
    (i32.const 0)) ;; CONTINUE
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (global.set $top (i32.const 4096))
    (i32.const 0)) ;; CONTINUE

  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
