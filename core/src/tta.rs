//! Test-time augmentation: the mean of the maps of flipped and rotated
//! copies of a scan, each map turned back before averaging.
//!
//! Training augments with horizontal and vertical flips and 90-degree
//! rotations (`data::augment`), so the network has seen every one of these
//! views; averaging them removes the part of a map that depends on the
//! orientation, as nnU-Net's mirroring does by default. The transforms form a
//! group, so the averaged map of a flipped scan is the flipped averaged map.

/// Which views of a scan are averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Tta {
    /// The scan as it is.
    #[default]
    None,
    /// The scan and its horizontal, vertical and double flips (4 runs).
    Flips,
    /// The 8 flips and 90-degree rotations (the dihedral group; 8 runs).
    Dihedral,
}

impl Tta {
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flips => "flips",
            Tta::Dihedral => "dihedral",
        }
    }

    /// The views, the identity first.
    pub fn views(self) -> Vec<View> {
        let transposes: &[bool] = match self {
            Tta::None => return vec![View::IDENTITY],
            Tta::Flips => &[false],
            Tta::Dihedral => &[false, true],
        };
        let mut views = Vec::new();
        for &transpose in transposes {
            for (flip_x, flip_y) in [(false, false), (true, false), (false, true), (true, true)] {
                views.push(View {
                    transpose,
                    flip_x,
                    flip_y,
                });
            }
        }
        views
    }
}

/// One view: an optional transpose (x and y swapped), then optional flips of
/// the result's columns (`flip_x`) and rows (`flip_y`). A transpose with one
/// flip is a 90-degree rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub transpose: bool,
    pub flip_x: bool,
    pub flip_y: bool,
}

impl View {
    pub const IDENTITY: View = View {
        transpose: false,
        flip_x: false,
        flip_y: false,
    };

    /// The size of the view of a `(w, h)` image.
    pub fn size(self, (w, h): (usize, usize)) -> (usize, usize) {
        if self.transpose { (h, w) } else { (w, h) }
    }

    /// The view of a row-major `(w, h)` image.
    pub fn apply<T: Copy>(self, src: &[T], (w, h): (usize, usize)) -> Vec<T> {
        assert_eq!(
            src.len(),
            w * h,
            "image of {w}x{h} has {} pixels",
            src.len()
        );
        let (vw, vh) = self.size((w, h));
        let mut out = Vec::with_capacity(src.len());
        for y in 0..vh {
            for x in 0..vw {
                let (sx, sy) = self.source((x, y), (vw, vh));
                out.push(src[sy * w + sx]);
            }
        }
        out
    }

    /// The `(w, h)` image whose view is `view` (of size `self.size((w, h))`):
    /// the inverse of [`View::apply`].
    pub fn undo<T: Copy>(self, view: &[T], (w, h): (usize, usize)) -> Vec<T> {
        self.inverse().apply(view, self.size((w, h)))
    }

    /// The view that turns this one back. Flips are their own inverses; a
    /// transpose moves a flip of columns to the rows and back, so undoing
    /// "transpose, then flip x" is "transpose, then flip y".
    fn inverse(self) -> View {
        if self.transpose {
            View {
                transpose: true,
                flip_x: self.flip_y,
                flip_y: self.flip_x,
            }
        } else {
            self
        }
    }

    /// The source pixel that view pixel `(x, y)` of a `(vw, vh)` view shows.
    fn source(self, (x, y): (usize, usize), (vw, vh): (usize, usize)) -> (usize, usize) {
        let x = if self.flip_x { vw - 1 - x } else { x };
        let y = if self.flip_y { vh - 1 - y } else { y };
        if self.transpose { (y, x) } else { (x, y) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize) -> Vec<u32> {
        (0..(w * h) as u32).collect()
    }

    #[test]
    fn undo_inverts_apply_for_every_view() {
        let (w, h) = (5, 3);
        let img = image(w, h);
        for v in Tta::Dihedral.views() {
            let view = v.apply(&img, (w, h));
            assert_eq!(view.len(), w * h);
            assert_eq!(v.undo(&view, (w, h)), img, "{v:?}");
        }
    }

    #[test]
    fn views_are_distinct_and_named_transforms_land_where_expected() {
        let (w, h) = (3, 2);
        let img = image(w, h); // rows [0 1 2] [3 4 5]
        let views = Tta::Dihedral.views();
        let all: Vec<Vec<u32>> = views.iter().map(|v| v.apply(&img, (w, h))).collect();
        for i in 0..all.len() {
            for j in 0..i {
                assert_ne!(all[i], all[j], "{:?} and {:?}", views[i], views[j]);
            }
        }
        let flip_x = View {
            flip_x: true,
            ..View::IDENTITY
        };
        assert_eq!(flip_x.apply(&img, (w, h)), vec![2, 1, 0, 5, 4, 3]);
        let transpose = View {
            transpose: true,
            ..View::IDENTITY
        };
        assert_eq!(transpose.apply(&img, (w, h)), vec![0, 3, 1, 4, 2, 5]);
        // Transpose then flip the rows: 90 degrees counter-clockwise.
        let rot = View {
            transpose: true,
            flip_y: true,
            ..View::IDENTITY
        };
        assert_eq!(rot.apply(&img, (w, h)), vec![2, 5, 1, 4, 0, 3]);
    }

    #[test]
    fn view_counts() {
        assert_eq!(Tta::None.views(), vec![View::IDENTITY]);
        assert_eq!(Tta::Flips.views().len(), 4);
        assert_eq!(Tta::Dihedral.views().len(), 8);
        assert!(Tta::Flips.views().iter().all(|v| !v.transpose));
    }
}
