;; Sums the input's bytes (wrapping at 2^32) and returns the sum as 4 little-endian bytes.
(module
  (memory (export "memory") 32)
  (func (export "alloc") (param $len i32) (result i32)
    i32.const 1024)
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32)
    (local $sum i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $sum
          (i32.add (local.get $sum)
                   (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 0) (local.get $sum))
    ;; output at offset 0, 4 bytes long
    (i64.or (i64.shl (i64.const 0) (i64.const 32)) (i64.const 4))))
