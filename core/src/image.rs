//! The engine's image: 8-bit grey, the network's input (scaled as
//! docs/MODEL.md says) and, holding 0 or 1, a lesion mask.
/// An 8-bit grey image, row-major, `pixels.len() == width * height`.
#[derive(Clone, PartialEq, Eq)]
pub struct Gray8 {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for Gray8 {
    // The pixel buffer can hold millions of values: keep debug output short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gray8 {{ {}x{} }}", self.width, self.height)
    }
}

impl Gray8 {
    pub fn new(width: usize, height: usize) -> Self {
        Gray8 {
            width,
            height,
            pixels: vec![0; width * height],
        }
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: u8) {
        self.pixels[y * self.width + x] = v;
    }

    /// The sub-image `[x0, x0+w) x [y0, y0+h)`; the caller keeps it inside.
    pub fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> Gray8 {
        let mut out = Gray8::new(w, h);
        for y in 0..h {
            let src = (y0 + y) * self.width + x0;
            out.pixels[y * w..(y + 1) * w].copy_from_slice(&self.pixels[src..src + w]);
        }
        out
    }

    /// Number of non-zero pixels (for masks: the lesion area).
    pub fn count_nonzero(&self) -> usize {
        self.pixels.iter().filter(|&&v| v != 0).count()
    }

    /// Bounding box `(x0, y0, x1, y1)` (exclusive ends) of the non-zero pixels.
    pub fn nonzero_bbox(&self) -> Option<(usize, usize, usize, usize)> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            let row = &self.pixels[y * self.width..(y + 1) * self.width];
            if let (Some(a), Some(b)) = (
                row.iter().position(|&v| v != 0),
                row.iter().rposition(|&v| v != 0),
            ) {
                x0 = x0.min(a);
                x1 = x1.max(b + 1);
                y0 = y0.min(y);
                y1 = y + 1;
            }
        }
        (x0 != usize::MAX).then_some((x0, y0, x1, y1))
    }
}
