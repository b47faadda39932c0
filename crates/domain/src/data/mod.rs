//! VTAB-1K data: the NOAH-layout reader ([`vtab`]), image decoding and PIL-exact resize
//! ([`image`]; which PNGs PIL opens: [`png_pil`]), decoded splits and batching ([`loader`];
//! read from their files batch by batch: [`split_file`]),
//! sources and the validated manifest ([`prepare`]), verified downloads ([`download`]), safe
//! archive extraction ([`archive`]), the one rule for hidden and OS entries of users' folders
//! ([`hidden`]), HF hub datasets ([`hub`]) and the embedded mini benchmark ([`mini`]). The one
//! VTAB-1K task table (groups, classes, recipe, split sizes) is [`vtab_tasks`].

pub mod archive;
pub mod download;
pub mod hidden;
pub mod hub;
pub mod image;
pub mod imagefolder;
pub mod loader;
pub mod mini;
pub mod png_pil;
pub mod prepare;
pub mod split_file;
pub mod vtab;
pub mod vtab_tasks;
