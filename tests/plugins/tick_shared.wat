;; tick_shared: a test plugin for the host's timer, shared data and properties.
;; proxy_on_configure asks for a tick every 50 ms; proxy_on_tick stores "1" under the shared
;; key "ticked"; proxy_on_response_headers adds `x-ticked: 1` once a tick has run (read back
;; with proxy_get_shared_data) and `x-backend-seen: <the gpt_oss.backend property>`.
(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick_period (param i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 1024) "ticked")                ;; 6 bytes
  (data (i32.const 1040) "1")                     ;; 1 byte
  (data (i32.const 1056) "x-ticked")              ;; 8 bytes
  (data (i32.const 1072) "gpt_oss\00backend")     ;; 15 bytes
  (data (i32.const 1088) "x-backend-seen")        ;; 14 bytes
  ;; 1200: value pointer, 1204: value length, 1208: CAS (written by the host)
  (global $heap_start i32 (i32.const 4096))
  (global $top (mut i32) (i32.const 4096))

  ;; A bump allocator reset at the start of every callback that uses it.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $top (i32.add (local.get $p) (local.get $size)))
    (local.get $p))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick_period (i32.const 50)))
    (i32.const 1))

  (func (export "proxy_on_tick") (param i32)
    (drop (call $set_shared (i32.const 1024) (i32.const 6) (i32.const 1040) (i32.const 1) (i32.const 0))))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32)
    (result i32)
    (global.set $top (global.get $heap_start))
    (if (i32.eqz (call $get_shared (i32.const 1024) (i32.const 6)
                                   (i32.const 1200) (i32.const 1204) (i32.const 1208)))
      (then
        (drop (call $add_header (i32.const 2) (i32.const 1056) (i32.const 8)
                                (i32.load (i32.const 1200)) (i32.load (i32.const 1204))))))
    (if (i32.eqz (call $get_property (i32.const 1072) (i32.const 15) (i32.const 1200) (i32.const 1204)))
      (then
        (drop (call $add_header (i32.const 2) (i32.const 1088) (i32.const 14)
                                (i32.load (i32.const 1200)) (i32.load (i32.const 1204))))))
    (i32.const 0))

  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
