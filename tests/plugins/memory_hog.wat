;; memory_hog: a fault-injection plugin for the host's tests. proxy_on_request_headers grows
;; its memory without end when the request has the header "x-plugin-fault: grow" (the host's
;; `max_memory_mib` must stop it), and returns CONTINUE otherwise. Everything else is the minimum a proxy-wasm 0.2.1 module needs.
(module
  ;; proxy_get_header_map_value(map, key_ptr, key_len, ret_value_ptr, ret_len_ptr) -> status
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; Static data below 4096; the allocator's arena starts at 4096.
  (data (i32.const 1024) "x-plugin-fault")   ;; 14 bytes
  (data (i32.const 1040) "grow")             ;; the value that triggers the fault
  ;; 1056: the i32 the host writes the value's address to; 1060: its length.
  (global $heap_start i32 (i32.const 4096))
  (global $top (mut i32) (i32.const 4096))

  ;; A bump allocator that grows the memory; 0 when it cannot. The host calls it to place the
  ;; header value. Nothing is kept across callbacks, so proxy_on_request_headers resets it.
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

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32)
    (result i32)
    (global.set $top (global.get $heap_start))
    (i32.store (i32.const 1056) (i32.const 0))
    (i32.store (i32.const 1060) (i32.const 0))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1024) (i32.const 14)
                                   (i32.const 1056) (i32.const 1060)))
      (then
        (if (i32.and
              (i32.eq (i32.load (i32.const 1060)) (i32.const 4))
              (i32.eq (i32.load (i32.load (i32.const 1056))) (i32.load (i32.const 1040))))
          (then (loop $more (drop (memory.grow (i32.const 16))) (br $more))))))
    (i32.const 0)) ;; CONTINUE

  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
