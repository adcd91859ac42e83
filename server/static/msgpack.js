// msgpack decoding for the subset the opgraph trace protocol uses (docs/protocol.md):
// nil, booleans, integers of every width, float32/64, str, bin, arrays and maps.
// A websocket frame or a recording holds several objects back to back, so the reader
// decodes one object at a time and remembers where it stopped: the viewer decodes a big
// frame a slice at a time without freezing the page.

const utf8 = new TextDecoder("utf-8", { fatal: true });
const TWO_32 = 4294967296;

export class MsgpackError extends Error {}

export class Reader {
  /** @param {Uint8Array|ArrayBuffer} bytes */
  constructor(bytes) {
    this.bytes = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.offset = 0;
  }

  /** True when every byte has been decoded. */
  get done() {
    return this.offset >= this.bytes.length;
  }

  /** Decode the next whole object. */
  next() {
    const start = this.offset;
    try {
      return this.read();
    } catch (err) {
      this.offset = this.bytes.length; // a broken stream cannot be resynchronised
      if (err instanceof RangeError) {
        throw new MsgpackError(`msgpack: truncated object starting at byte ${start}`);
      }
      throw err;
    }
  }

  need(n) {
    if (this.offset + n > this.bytes.length) throw new RangeError("truncated");
  }

  read() {
    this.need(1);
    const type = this.bytes[this.offset++];
    if (type <= 0x7f) return type; // positive fixint
    if (type >= 0xe0) return type - 0x100; // negative fixint
    if (type >= 0x80 && type <= 0x8f) return this.map(type & 0x0f);
    if (type >= 0x90 && type <= 0x9f) return this.array(type & 0x0f);
    if (type >= 0xa0 && type <= 0xbf) return this.str(type & 0x1f);
    const view = this.view;
    switch (type) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.uint(1));
      case 0xc5: return this.bin(this.uint(2));
      case 0xc6: return this.bin(this.uint(4));
      case 0xca: this.need(4); this.offset += 4; return view.getFloat32(this.offset - 4);
      case 0xcb: this.need(8); this.offset += 8; return view.getFloat64(this.offset - 8);
      case 0xcc: return this.uint(1);
      case 0xcd: return this.uint(2);
      case 0xce: return this.uint(4);
      case 0xcf: return this.int64(false);
      case 0xd0: this.need(1); this.offset += 1; return view.getInt8(this.offset - 1);
      case 0xd1: this.need(2); this.offset += 2; return view.getInt16(this.offset - 2);
      case 0xd2: this.need(4); this.offset += 4; return view.getInt32(this.offset - 4);
      case 0xd3: return this.int64(true);
      case 0xd9: return this.str(this.uint(1));
      case 0xda: return this.str(this.uint(2));
      case 0xdb: return this.str(this.uint(4));
      case 0xdc: return this.array(this.uint(2));
      case 0xdd: return this.array(this.uint(4));
      case 0xde: return this.map(this.uint(2));
      case 0xdf: return this.map(this.uint(4));
      default:
        throw new MsgpackError(
          `msgpack: type byte 0x${type.toString(16)} at byte ${this.offset - 1} ` +
          "is not part of the opgraph protocol (ext types are not used)");
    }
  }

  uint(size) {
    this.need(size);
    const view = this.view, at = this.offset;
    this.offset += size;
    if (size === 1) return view.getUint8(at);
    if (size === 2) return view.getUint16(at);
    return view.getUint32(at);
  }

  // 64-bit integers become Numbers while exact (|n| < 2**53), BigInts beyond.
  int64(signed) {
    this.need(8);
    const at = this.offset;
    this.offset += 8;
    const high = signed ? this.view.getInt32(at) : this.view.getUint32(at);
    const low = this.view.getUint32(at + 4);
    const n = high * TWO_32 + low;
    if (Number.isSafeInteger(n)) return n;
    return signed ? this.view.getBigInt64(at) : this.view.getBigUint64(at);
  }

  str(length) {
    this.need(length);
    const bytes = this.bytes, start = this.offset, end = start + length;
    this.offset = end;
    if (length < 48) { // short ASCII strings (keys, op names) without TextDecoder
      let out = "";
      for (let i = start; i < end; i++) {
        const c = bytes[i];
        if (c > 0x7f) return utf8.decode(bytes.subarray(start, end));
        out += String.fromCharCode(c);
      }
      return out;
    }
    return utf8.decode(bytes.subarray(start, end));
  }

  bin(length) {
    this.need(length);
    this.offset += length;
    return this.bytes.slice(this.offset - length, this.offset);
  }

  array(length) {
    const out = new Array(length);
    for (let i = 0; i < length; i++) out[i] = this.read();
    return out;
  }

  map(length) {
    const out = {};
    for (let i = 0; i < length; i++) {
      const key = this.read();
      const value = this.read();
      if (key === "__proto__") { // keep it a plain field, never the prototype
        Object.defineProperty(out, key, { value, enumerable: true, writable: true });
      } else {
        out[key] = value;
      }
    }
    return out;
  }
}

/** Decode exactly one object; trailing bytes are an error. */
export function decode(bytes) {
  const reader = new Reader(bytes);
  const value = reader.next();
  if (!reader.done) {
    throw new MsgpackError(`msgpack: ${reader.bytes.length - reader.offset} bytes after the object`);
  }
  return value;
}

/** Decode every object of a buffer holding several back to back. */
export function decodeMulti(bytes) {
  const reader = new Reader(bytes);
  const out = [];
  while (!reader.done) out.push(reader.next());
  return out;
}
